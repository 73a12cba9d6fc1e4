-- Shared by the benchmark's wrk scripts (loaded with dofile from the script's own folder).
--
-- Script arguments (after `--` on the wrk command line):
--   args[1]  number of pre-provisioned users; requests pick "bench-u<n>" with n uniform in [0, N)
--   args[2]  a tag unique to this wrk run; request ids are "<tag>-<thread>-<counter>"
-- Environment: BENCH_API_KEY (the X-API-Key value).

local common = {}

local next_thread = 0

-- Main state: number the threads so every thread gets its own request-id prefix.
function common.setup(thread)
   thread:set("thread_index", next_thread)
   next_thread = next_thread + 1
end

-- Thread state: read the arguments, seed the user picker, set the fixed headers.
function common.init(args)
   common.users = tonumber(args[1]) or 1000
   common.tag = args[2] or tostring(os.time())
   common.prefix = common.tag .. "-" .. tostring(thread_index or 0) .. "-"
   common.counter = 0
   math.randomseed(os.time() * 1000 + (thread_index or 0) * 7919)
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["X-API-Key"] = os.getenv("BENCH_API_KEY") or ""
end

function common.user()
   return "bench-u" .. tostring(math.random(0, common.users - 1))
end

function common.request_id()
   common.counter = common.counter + 1
   return common.prefix .. tostring(common.counter)
end

-- One JSON line the runner parses; wrk's own summary is printed before it.
function common.done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"requests_per_sec":%.2f,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end

-- Install wrk's hooks for a scenario: POST to `path` with the body `body()` builds.
function common.install(path, body)
   setup = common.setup
   init = common.init
   done = common.done
   request = function()
      return wrk.format("POST", path, nil, body())
   end
end

return common
