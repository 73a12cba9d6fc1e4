-- POST /api/check-budget with a unique request_id: each allowed check places a hold.
-- Args: <users> <tag>; see common.lua.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

setup = common.setup
init = common.init
done = common.done

function request()
   local body = '{"user_id":"' .. common.user() .. '","model":"gpt-4o",' ..
      '"tokens_input":100,"tokens_output":100,"cost_estimate":0.001,' ..
      '"request_id":"' .. common.request_id() .. '"}'
   return wrk.format("POST", "/api/check-budget", nil, body)
end
