-- wrk script: 100 events per request, each with a unique id.
-- Usage: wrk -t2 -c16 -d30s --latency -s bench/ingest/batch.lua http://127.0.0.1:8088/v1/events/batch
-- Env: ESS_BENCH_KEY (API key), ESS_BENCH_BATCH (events per request, default 100).

local key = os.getenv("ESS_BENCH_KEY") or "bench-key-0123456789abcdef"
local size = tonumber(os.getenv("ESS_BENCH_BATCH") or "100")
local counter = 0
local prefix

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  -- A per-thread prefix (random, plus the thread number); a counter makes each id unique.
  local t = tid or 0
  math.randomseed(os.time() * 7919 + t)
  prefix = string.format("%08x-%04x-4%03x-%04x-", math.random(0, 0x7fffffff), t,
    math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff))
end

local headers = {
  ["Content-Type"] = "application/json",
  ["X-API-Key"] = key,
}

function request()
  local parts = {}
  for i = 1, size do
    counter = counter + 1
    parts[i] = string.format(
      '{"id":"%s%012x","type":"page_view","source":"wrk","properties":{"path":"/bench","n":%d}}',
      prefix, counter, counter)
  end
  return wrk.format("POST", nil, headers, "[" .. table.concat(parts, ",") .. "]")
end
