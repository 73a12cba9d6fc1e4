-- wrk script of every scenario: POST the scenario's body, filled in from the template the runner
-- passes (bench/scenarios.py SCENARIOS writes each body once; bench.instructions sends the same
-- ones).
--
-- Script arguments (after `--` on the wrk command line):
--   args[1]  number of pre-provisioned users: "{user}" becomes "bench-u<n>", n uniform in [0, N)
--   args[2]  a tag unique to this wrk run: "{request_id}" becomes "<tag>-<thread>-<counter>"
--   args[3]  the body template
-- Environment: BENCH_API_KEY (the X-API-Key value).

local next_thread = 0

-- Main state: number the threads so every thread gets its own request-id prefix.
function setup(thread)
   thread:set("thread_index", next_thread)
   next_thread = next_thread + 1
end

local users, prefix, counter = 1000, "", 0

local fill = {
   user = function()
      return "bench-u" .. tostring(math.random(0, users - 1))
   end,
   request_id = function()
      counter = counter + 1
      return prefix .. tostring(counter)
   end,
}

-- The template cut once into its literal text and the slots between: literals[i] comes before
-- slots[i], and literals[#slots + 1] ends the body.
local literals, slots = {}, {}

-- Thread state: read the arguments, cut the template, seed the user picker, set the headers.
function init(args)
   users = tonumber(args[1]) or 1000
   prefix = (args[2] or tostring(os.time())) .. "-" .. tostring(thread_index or 0) .. "-"
   local template = args[3] or error("post.lua: the body template (args[3]) is missing")
   local at = 1
   for first, name, after in template:gmatch("()%{([%a_]+)%}()") do
      local slot = fill[name] or error("post.lua: unknown slot {" .. name .. "}")
      literals[#literals + 1] = template:sub(at, first - 1)
      slots[#slots + 1] = slot
      at = after
   end
   literals[#literals + 1] = template:sub(at)
   math.randomseed(os.time() * 1000 + (thread_index or 0) * 7919)
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["X-API-Key"] = os.getenv("BENCH_API_KEY") or ""
end

local parts = {}

-- The path is the one on wrk's command line.
function request()
   local count = #slots
   for i = 1, count do
      parts[2 * i - 1] = literals[i]
      parts[2 * i] = slots[i]()
   end
   parts[2 * count + 1] = literals[count + 1]
   return wrk.format("POST", nil, nil, table.concat(parts, "", 1, 2 * count + 1))
end

-- One JSON line the runner parses; wrk's own summary is printed before it.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"requests_per_sec":%.2f,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end
