-- wrk script used by bench/ingest.py (see there for how to run the benchmark).
--
--   wrk ... -s bench/ingest.lua URL -- BODY_TEMPLATE_FILE NONCE [AUTHORIZATION]
--
-- Every request POSTs the template with each "@@MID@@" replaced by a fresh messageId
-- (NONCE-thread-request-index), so the relay stores every event instead of deduplicating it.
-- done() prints one line "WRK_RESULT {json}" with exact percentiles from wrk's latency
-- histogram (microseconds), so the caller does not have to parse wrk's human-readable output.

local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_id", thread_count)
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   local template = f:read("*a")
   f:close()
   parts = {}
   local start = 1
   while true do
      local s, e = string.find(template, "@@MID@@", start, true)
      if not s then
         parts[#parts + 1] = string.sub(template, start)
         break
      end
      parts[#parts + 1] = string.sub(template, start, s - 1)
      start = e + 1
   end
   prefix = (args[2] or "wrk") .. "-" .. tostring(thread_id or 0) .. "-"
   headers = { ["Content-Type"] = "application/json" }
   if args[3] and args[3] ~= "" then
      headers["Authorization"] = args[3]
   end
   counter = 0
end

function request()
   counter = counter + 1
   local n = #parts
   local base = prefix .. counter .. "-"
   local buf = {}
   for i = 1, n - 1 do
      buf[2 * i - 1] = parts[i]
      buf[2 * i] = base .. i
   end
   buf[2 * n - 1] = parts[n]
   return wrk.format("POST", nil, headers, table.concat(buf))
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
      '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.mean, latency.max))
end
