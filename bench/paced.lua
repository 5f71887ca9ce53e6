-- wrk script: bench/put.lua with a pause of DELAY_MS (environment) milliseconds between a
-- connection's requests, so the offered rate is about connections / (latency + pause).
local target = os.getenv("TARGET") or "meridian"
local value = string.rep("v", 256)
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(data)
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
local value_b64 = b64(value)
local thread_id = 0
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = tid or 0
end

function request()
  counter = counter + 1
  local key = string.format("%02x%014x", thread_id, counter) -- 16 bytes
  if target == "etcd" then
    local body = '{"key":"' .. b64(key) .. '","value":"' .. value_b64 .. '"}'
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
  end
  return wrk.format("PUT", "/v1/kv/" .. key, nil, value)
end

function delay()
  return tonumber(os.getenv("DELAY_MS") or "0")
end

function response(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
end
