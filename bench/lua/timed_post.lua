-- wrk script of bench.reset_under_load: lua/post.lua's requests, each one's start time and
-- latency written to a file, so the runner can tell requests during the reset from the others
-- (wrk's own figures cover a whole run).
--
-- Run with one connection per thread (-tN -cN): request() and response() then alternate on the
-- thread's one connection, so each response is the answer to the request started last.
-- Script arguments: post.lua's three, then args[4], a path prefix: thread n writes
-- "<prefix><n>", one line per answer, "<start µs since the epoch> <latency µs> <status>".

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_REALTIME = 0
local now_buffer = ffi.new("bench_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_REALTIME, now_buffer)
   return tonumber(now_buffer.tv_sec) * 1000000 + math.floor(tonumber(now_buffer.tv_nsec) / 1000)
end

-- Lines are written at most every FLUSH_US: a thread's last lines (under that long before wrk
-- stops) may be lost, and the runner ends its last window that much before it stops wrk.
local FLUSH_US = 250000
local post_init, post_request = init, request
local out, lines, last_flush_us, started_us = nil, {}, 0, 0

function init(args)
   post_init(args)
   local prefix = args[4] or error("timed_post.lua: the output prefix (args[4]) is missing")
   out = assert(io.open(prefix .. tostring(thread_index or 0), "w"))
end

function request()
   started_us = now_us()
   return post_request()
end

function response(status, headers, body)
   local ended_us = now_us()
   lines[#lines + 1] = string.format("%d %d %d\n", started_us, ended_us - started_us, status)
   if ended_us - last_flush_us >= FLUSH_US then
      out:write(table.concat(lines))
      out:flush()
      lines = {}
      last_flush_us = ended_us
   end
end
