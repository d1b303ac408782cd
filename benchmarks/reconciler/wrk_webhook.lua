-- The load of benchmarks/reconciler/bench_intake.py, for wrk (Debian's `wrk`): POSTs Alertmanager webhook payloads,
-- the lines of the file $BODIES in turn, with the bearer token $TOKEN, and prints one JSON line of what it measured. A
-- client in C costs the shared CPUs a few microseconds a request, as Alertmanager (Go) does, so the servers get the
-- machine.

local prepared = {}
local turn = 0

function init(args)
  local headers = {["Authorization"] = "Bearer " .. os.getenv("TOKEN"), ["Content-Type"] = "application/json"}
  for line in io.lines(os.getenv("BODIES")) do
    prepared[#prepared + 1] = wrk.format("POST", wrk.path, headers, line)
  end
  -- Each thread starts elsewhere in the list, so threads do not send the same alert at the same moment.
  turn = math.random(#prepared) - 1
end

function request()
  turn = turn % #prepared + 1
  return prepared[turn]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "latency_p50_us": %d, "latency_p99_us": %d, "latency_max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
