-- wrk script: one event per request, each with a unique id.
-- Usage: wrk -t2 -c64 -d30s --latency -s bench/ingest/event.lua http://127.0.0.1:8088/v1/events
-- Env: ESS_BENCH_KEY (API key; default matches bench/ingest/run.sh).

local key = os.getenv("ESS_BENCH_KEY") or "bench-key-0123456789abcdef"
-- setup, init and next_id: unique ids per thread.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../lib/ids.lua")

local headers = {
  ["Content-Type"] = "application/json",
  ["X-API-Key"] = key,
}

function request()
  local id, n = next_id()
  local body = string.format(
    '{"id":"%s","type":"page_view","source":"wrk","properties":{"path":"/bench","n":%d}}', id, n)
  return wrk.format("POST", nil, headers, body)
end
