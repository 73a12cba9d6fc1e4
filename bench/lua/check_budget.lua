-- POST /api/check-budget, read-only (no request_id). Args: <users> <tag>; see common.lua.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

common.install("/api/check-budget", function()
   return '{"user_id":"' .. common.user() .. '","model":"gpt-4o",' ..
         '"tokens_input":100,"tokens_output":100,"cost_estimate":0.001}'
end)
