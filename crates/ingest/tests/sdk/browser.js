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
  page.on('requestfinished', async (r) => {
    if (!r.url().startsWith(host)) return
    const response = await r.response()
    requests.push({ url: r.url(), method: r.method(), headers: await r.allHeaders(),
                    body: r.postData(), status: response ? response.status() : null })
  })
  page.on('requestfailed', (r) => {
    if (!r.url().startsWith(host)) return
    requests.push({ url: r.url(), method: r.method(), body: r.postData(), status: null,
                    failure: r.failure()?.errorText })
  })
  const query = new URLSearchParams({ host, key, run })
  await page.goto(`${pageUrl}/?${query}`)
  // The SDK resolves its calls before their requests finish: wait for the three answers.
  const answered = ['/v1/i', '/v1/t', '/v1/p'].map((path) =>
    page.waitForResponse((r) => r.url() === host + path && r.request().method() === 'POST',
                         { timeout: 15000 }).catch(() => null))
  const result = await page.evaluate(() => window.sendAll())
  await Promise.all(answered)
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
