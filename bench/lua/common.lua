-- Shared by the benchmark's wrk scripts: the request body comes from a file named by BENCH_BODY
-- (written by the benchmark), and done() prints one machine-readable line for it to parse.

function bench_read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

function bench_setup_request(content_type)
  wrk.method = "POST"
  wrk.body = bench_read_file(os.getenv("BENCH_BODY"))
  wrk.headers["Content-Type"] = content_type
end

-- Per-status counts (a response() callback costs wrk about a microsecond per response, far below
-- any server here; wrk itself counts only statuses >= 400, this counts every non-2xx).
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

do
  statuses = {}
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local per = thread:get("statuses")
    if per then
      for status, n in pairs(per) do
        counts[status] = (counts[status] or 0) + n
      end
    end
  end
  local status_parts = {}
  for status, n in pairs(counts) do
    table.insert(status_parts, string.format('"%d": %d', status, n))
  end
  local pct = {}
  for _, q in ipairs({50, 90, 99, 99.9}) do
    table.insert(pct, string.format('"%s": %d', tostring(q), latency:percentile(q)))
  end
  -- An upper bound on the p99 of the 200 responses alone: wrk keeps one histogram for all
  -- responses, but at least 99% of the 200s lie at or below the overall percentile of rank
  -- (others + 0.99 x ok) / total, whatever the others' latencies are.
  local ok, total = counts[200] or 0, 0
  for _, n in pairs(counts) do total = total + n end
  local ok_p99 = -1
  if ok > 0 then
    ok_p99 = latency:percentile(math.min(100, 100 * ((total - ok) + 0.99 * ok) / total))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, "percentiles": {%s}}, ' ..
    '"statuses": {%s}, "ok_p99_upper_us": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(pct, ", "),
    table.concat(status_parts, ", "), ok_p99))
end
