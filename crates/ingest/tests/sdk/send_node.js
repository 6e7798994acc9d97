// Drives the real @segment/analytics-node SDK against ess: track, identify, page (one request
// each, flushAt 1) and a batch of five tracks. The process clock is skewed by ESS_SKEW_SECONDS
// (default -1800) for every `new Date()` the SDK makes. Prints one JSON line per HTTP request:
// {"status": ..., "body": <what was posted>}. Exits 1 if the SDK reported an error.
//
// Usage: node send_node.js URL WRITE_KEY RUN_ID
'use strict'
const skewMs = 1000 * Number(process.env.ESS_SKEW_SECONDS ?? '-1800')
const RealDate = Date
class SkewedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(RealDate.now() + skewMs)
    else super(...args)
  }
  static now() {
    return RealDate.now() + skewMs
  }
}
global.Date = SkewedDate

const { Analytics } = require('@segment/analytics-node')
const [url, writeKey, run] = process.argv.slice(2)

const sent = []
const errors = []
function watch(analytics) {
  const pending = []
  analytics.on('http_request', (r) => pending.push(JSON.parse(r.body)))
  analytics.on('http_response', (r) => sent.push({ status: r.status, body: pending.shift() }))
  analytics.on('error', (e) => errors.push(String(e.reason ?? e.code ?? e)))
  return analytics
}

async function main() {
  const single = watch(new Analytics({ writeKey, host: url, flushAt: 1, maxRetries: 0 }))
  const done = (resolve) => (err) => {
    if (err) errors.push(String(err))
    resolve()
  }
  await new Promise((r) =>
    single.track(
      { userId: `user-${run}`, event: 'Signed Up', properties: { plan: 'team', seats: 3 },
        context: { ip: '192.0.2.10' } },
      done(r)))
  await new Promise((r) =>
    single.identify({ userId: `user-${run}`, traits: { name: 'Ada', email: `${run}@example.org` } },
      done(r)))
  await new Promise((r) =>
    single.page({ anonymousId: `anon-${run}`, category: 'Shop', name: 'Cart',
                  properties: { path: '/cart' } }, done(r)))
  await single.closeAndFlush()

  const batched = watch(new Analytics({ writeKey, host: url, flushAt: 100, flushInterval: 60000,
                                         maxRetries: 0 }))
  const historical = new SkewedDate(SkewedDate.now() - 2 * 24 * 3600 * 1000)
  for (let i = 0; i < 5; i++) {
    batched.track({ anonymousId: `anon-${run}`, event: `Batch Item ${i}`, properties: { i },
                    timestamp: i === 0 ? historical : undefined })
  }
  await batched.closeAndFlush()

  for (const request of sent) console.log(JSON.stringify(request))
  if (errors.length) {
    console.error('SDK errors: ' + errors.join('; '))
    process.exit(1)
  }
}
main().catch((e) => {
  console.error(e)
  process.exit(1)
})
