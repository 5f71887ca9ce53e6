-- wrk script: bench/put.lua (its path in PUT_LUA, default bench/put.lua) with a pause of
-- DELAY_MS (environment) milliseconds between a connection's requests, so the offered rate
-- is about connections / (latency + pause). The workload itself is put.lua's, unchanged.
dofile(os.getenv("PUT_LUA") or "bench/put.lua")

function delay()
  return tonumber(os.getenv("DELAY_MS") or "0")
end
