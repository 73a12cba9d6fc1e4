-- POST /api/log-usage with a unique request_id (no hold to settle: a plain usage write).
-- Args: <users> <tag>; see common.lua.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

common.install("/api/log-usage", function()
   return '{"user_id":"' .. common.user() .. '","model":"gpt-4o",' ..
         '"request_id":"' .. common.request_id() .. '",' ..
         '"tokens_input":100,"tokens_output":100,"cost_total":0.001,"response_time":850}'
end)
