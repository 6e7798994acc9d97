-- wrk script: the Segment batch shape (what analytics-node posts to /v1/batch), 100 track calls
-- per request carrying the same properties as bench/ingest/batch.lua's events, each with a
-- unique UUID messageId (kept as the event id).
-- Usage: wrk -t2 -c16 -d30s -s bench/segment/batch.lua http://127.0.0.1:29088/v1/batch
-- Env: ESS_BENCH_KEY (write key, sent as HTTP Basic user), ESS_BENCH_BATCH (calls per request).

local key = os.getenv("ESS_BENCH_KEY") or "bench-key-0123456789abcdef"
local size = tonumber(os.getenv("ESS_BENCH_BATCH") or "100")
-- setup, init and next_id: unique ids per thread.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "../lib/ids.lua")

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(data)
  return ((data:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Basic " .. base64(key .. ":"),
}

function request()
  local now = os.date("!%Y-%m-%dT%H:%M:%S.000Z")
  local parts = {}
  for i = 1, size do
    local id, n = next_id()
    parts[i] = string.format(
      '{"type":"track","event":"page_view","messageId":"%s","anonymousId":"wrk",' ..
      '"properties":{"path":"/bench","n":%d},"timestamp":"%s",' ..
      '"context":{"library":{"name":"wrk","version":"1"}},"integrations":{}}',
      id, n, now)
  end
  local body = '{"batch":[' .. table.concat(parts, ",") .. '],"sentAt":"' .. now .. '"}'
  return wrk.format("POST", nil, headers, body)
end
