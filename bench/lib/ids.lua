-- Unique event ids for the wrk scripts (loaded with dofile by bench/ingest/*.lua and
-- bench/segment/batch.lua): each thread gets a prefix (random, plus the thread number) and
-- counts, so no two requests of a run, nor of two runs, carry the same id.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local prefix
local counter = 0

function init(args)
  local t = tid or 0
  math.randomseed(os.time() * 7919 + t)
  prefix = string.format("%08x-%04x-4%03x-%04x-", math.random(0, 0x7fffffff), t,
    math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff))
end

-- The next id (a UUID) and its number within the thread.
function next_id()
  counter = counter + 1
  return string.format("%s%012x", prefix, counter), counter
end
