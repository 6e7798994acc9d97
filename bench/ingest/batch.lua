-- wrk script: 100 events per request, each with a unique id.
-- Usage: wrk -t2 -c16 -d30s --latency -s bench/ingest/batch.lua http://127.0.0.1:8088/v1/events/batch
-- Env: ESS_BENCH_KEY (API key), ESS_BENCH_BATCH (events per request, default 100).

local key = os.getenv("ESS_BENCH_KEY") or "bench-key-0123456789abcdef"
local size = tonumber(os.getenv("ESS_BENCH_BATCH") or "100")
-- setup, init and next_id: unique ids per thread.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../lib/ids.lua")

local headers = {
  ["Content-Type"] = "application/json",
  ["X-API-Key"] = key,
}

function request()
  local parts = {}
  for i = 1, size do
    local id, n = next_id()
    parts[i] = string.format(
      '{"id":"%s","type":"page_view","source":"wrk","properties":{"path":"/bench","n":%d}}', id, n)
  end
  return wrk.format("POST", nil, headers, "[" .. table.concat(parts, ",") .. "]")
end
