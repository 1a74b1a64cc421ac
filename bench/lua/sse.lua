-- wrk: POST a streaming chat completion (SSE answer, 16 events) and time the
-- whole stream; prints one machine-readable line that bench/run.sh parses.
wrk.method = "POST"
wrk.body = '{"model":"m","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99),
      e.connect + e.read + e.write + e.status + e.timeout))
end
