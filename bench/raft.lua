-- wrk script for bench/raft.sh: the same workload against Meridian (/v1/kv) and etcd's JSON
-- gateway (/v3/kv/put, /v3/kv/range), selected by environment variables:
--   TARGET=meridian|etcd
--   OP=put  PUT a new 16-byte key (thread id + counter, as bench/put.lua) with a 256-byte value
--   OP=get  linearizable GET of one of KEYS existing 16-byte keys r000000000000001.. (bench/raft.sh
--           loads them first): Meridian `GET /v1/kv/{key}?consistency=linearizable`, etcd
--           `POST /v3/kv/range` (serializable=false, etcd's default: a linearizable read)
-- Unlike bench/put.lua, no base64 is computed per request: etcd's encoded keys come from
-- tables built in init(), so the load generator (sharing the machine's cores with the
-- servers) spends about as much CPU per request on either target.
local target = os.getenv("TARGET") or "meridian"
local op = os.getenv("OP") or "put"
local nkeys = tonumber(os.getenv("KEYS") or "1024")
-- READ=local: Meridian `?consistency=local`, etcd `"serializable": true` (bench/compare-etcd.sh)
local read = os.getenv("READ") or "linearizable"
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
local hex = "0123456789abcdef"
local t3, t1 = {}, {} -- base64 of every 3-hex-digit group and of every single hex digit
local threads = {}
local thread_id, counter, gets = 0, 0, nil

-- A 16-hex-digit key is 5 aligned 3-byte groups and 1 byte, each encoded on its own.
local function b64hex16(k)
  return t3[k:sub(1, 3)] .. t3[k:sub(4, 6)] .. t3[k:sub(7, 9)] .. t3[k:sub(10, 12)] .. t3[k:sub(13, 15)] .. t1[k:sub(16, 16)]
end

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = tid or 0
  if op == "get" then
    gets = {}
    for i = 1, nkeys do
      local key = string.format("r%015d", i)
      if target == "etcd" then
        local serializable = (read == "local") and ',"serializable":true' or ""
        gets[i] = wrk.format("POST", "/v3/kv/range", { ["Content-Type"] = "application/json" }, '{"key":"' .. b64(key) .. '"' .. serializable .. '}')
      else
        gets[i] = wrk.format("GET", "/v1/kv/" .. key .. "?consistency=" .. read)
      end
    end
    counter = thread_id * 97 -- threads start at different keys
  elseif target == "etcd" then
    for a = 1, 16 do
      local ca = hex:sub(a, a)
      t1[ca] = b64(ca)
      for b = 1, 16 do
        for c = 1, 16 do
          local s = ca .. hex:sub(b, b) .. hex:sub(c, c)
          t3[s] = b64(s)
        end
      end
    end
    local probe = "0123456789abcdef"
    assert(b64hex16(probe) == b64(probe), "base64 tables are wrong")
  end
end

function request()
  counter = counter + 1
  if gets then
    return gets[counter % nkeys + 1]
  end
  local key = string.format("%02x%014x", thread_id, counter) -- 16 bytes
  if target == "etcd" then
    local body = '{"key":"' .. b64hex16(key) .. '","value":"' .. value_b64 .. '"}'
    return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
  end
  return wrk.format("PUT", "/v1/kv/" .. key, nil, value)
end
