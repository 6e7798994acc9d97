-- wrk script: POST /v1/events with a unique event id in every event.
--   wrk -t2 -c64 -d30s --latency -s events.lua http://127.0.0.1:8090
-- Environment: BATCH=N sends a JSON array of N events per request to /v1/events/batch
-- (default 1: one object to /v1/events); API_KEY=K adds `X-API-Key: K`; DELAY_MS=D makes every connection wait D ms
-- before each request (pacing for the end-to-end run; default 0: as fast as answers come).
-- Ids look like UUID v4: a random prefix per thread, the thread's number and a counter, so no
-- two events of one run share an id. At the end it prints one line `WRK_JSON {...}` with the
-- totals and latency percentiles (microseconds) for bench/run to read. errors_status counts
-- answers with a status of 400 or more (wrk's own count; no per-response hook, which would
-- slow wrk down for every target alike).

local threads = {}
local batch = tonumber(os.getenv("BATCH") or "1") or 1
local api_key = os.getenv("API_KEY")
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0") or 0

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

local prefix, counter, headers

function init(args)
   math.randomseed(os.time() * 1000 + thread_index * 7919 + math.floor(os.clock() * 1e6))
   prefix = string.format("%08x-%04x-4%03x-%x%03x-%02x",
      math.random(0, 0xffffffff), math.random(0, 0xffff), math.random(0, 0xfff),
      8 + math.random(0, 3), math.random(0, 0xfff), thread_index % 256)
   counter = 0
   headers = { ["Content-Type"] = "application/json" }
   if api_key and api_key ~= "" then
      headers["X-API-Key"] = api_key
   end
end

local function event()
   counter = counter + 1
   local id = string.format("%s%010x", prefix, counter)
   return '{"id":"' .. id .. '","type":"page_view","source":"bench","timestamp":"'
      .. os.date("!%Y-%m-%dT%H:%M:%S") .. '.000Z","properties":{"path":"/products/'
      .. (counter % 1000) .. '","referrer":"https://example.com/","screen":"1920x1080"}}'
end

if delay_ms > 0 then
   function delay()
      return delay_ms
   end
end

function request()
   local body
   local path = "/v1/events"
   if batch <= 1 then
      body = event()
   else
      path = "/v1/events/batch"
      local parts = {}
      for i = 1, batch do
         parts[i] = event()
      end
      body = "[" .. table.concat(parts, ",") .. "]"
   end
   return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"batch":%d,'
      .. '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,'
      .. '"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes, batch,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(95),
      latency:percentile(99), latency.max, latency.mean))
end
