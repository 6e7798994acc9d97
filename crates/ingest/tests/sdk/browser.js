// Opens the test page in headless Chromium (Debian's, driven by playwright-core), lets
// analytics-next send identify/track/page to ess, then leaves the page so its pagehide beacon
// goes out. Prints one JSON object: the page's user agent, the SDK's failures, and every request
// the page made to ess (url, method, headers, body, response status).
//
// Usage: node browser.js PAGE_URL INGEST_URL WRITE_KEY RUN_ID
'use strict'
const { chromium } = require('playwright-core')
const [pageUrl, host, key, run] = process.argv.slice(2)

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.ESS_CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu'],
  })
  const page = await browser.newPage()
  const requests = []
  // The SDK never reads response bodies, so a request counts when its answer's headers arrive
  // (leaving the page later aborts the unread body).
  const answered = new Set()
  page.on('response', async (response) => {
    const r = response.request()
    if (!r.url().startsWith(host)) return
    answered.add(r)
    requests.push({ url: r.url(), method: r.method(), headers: await r.allHeaders(),
                    body: r.postData(), status: response.status() })
  })
  page.on('requestfailed', (r) => {
    if (!r.url().startsWith(host) || answered.has(r)) return
    requests.push({ url: r.url(), method: r.method(), body: r.postData(), status: null,
                    failure: r.failure()?.errorText })
  })
  const query = new URLSearchParams({ host, key, run })
  await page.goto(`${pageUrl}/?${query}`)
  const result = await page.evaluate(() => window.sendAll())
  // Leaving the page fires pagehide: the beacon.
  await page.goto('about:blank')
  await new Promise((r) => setTimeout(r, 500))
  await browser.close()
  console.log(JSON.stringify({ ...result, requests }))
}
main().catch((e) => {
  console.error(e)
  process.exit(1)
})
