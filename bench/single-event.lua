-- wrk script: single-event POSTs with a unique id per request.
-- wrk -t1 -c64 -d20s -s bench/single-event.lua http://127.0.0.1:8000
-- With AUDIT_TOKEN set, every request carries `Authorization: Bearer $AUDIT_TOKEN`.
local counter = 0
local token = os.getenv("AUDIT_TOKEN")
local headers = {["Content-Type"] = "application/json"}
if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))

function setup(thread)
  thread:set("tid", tostring(math.random(1, 1e9)))
end

request = function()
  counter = counter + 1
  local id = prefix .. "-" .. tid .. "-" .. counter
  local body = '{"specversion":"1.0","id":"' .. id .. '","source":"urn:openg2p:registry",'
    .. '"type":"org.openg2p.beneficiary.updated","subject":"beneficiary/' .. (counter % 1000) .. '",'
    .. '"time":"2026-11-22T10:00:00.000Z","data":{"actor":{"type":"user","id":"user-42",'
    .. '"name":"Alice","roles":["officer"],"ip":"10.1.2.3"},"action":"beneficiary.update",'
    .. '"outcome":"success","resource":{"type":"beneficiary","id":"123"},'
    .. '"changes":[{"field":"phone","old":"x","new":"y"}]}}'
  return wrk.format("POST", "/v1/auditmanager/events", headers, body)
end

local non202 = 0
response = function(status, headers, body)
  if status ~= 202 then non202 = non202 + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("p50 %.1fms p90 %.1fms p99 %.1fms max %.1fms; non-2xx/3xx %d\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, summary.errors.status))
end
