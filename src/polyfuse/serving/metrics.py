"""Prometheus text exposition (format 0.0.4) of the server's counters, histograms and gauges."""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)     # the last one is +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, v: float):
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, cum = [], 0
        sep = "," if labels else ""
        for b, c in zip(self.buckets + (float("inf"),), self.counts):
            cum += c
            le = "+Inf" if b == float("inf") else f"{b:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {cum}')
        lab = f"{{{labels}}}" if labels else ""
        return out + [f"{name}_sum{lab} {self.sum:.6f}", f"{name}_count{lab} {self.count}"]


class Metrics:
    def __init__(self, max_batch_size: int):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch_size})
        self.batch_size = Histogram([s for s in sizes if s <= max_batch_size])
        self.queue_depth = lambda: 0
        self.in_flight = 0

    def observe_request(self, route: str, status: int, seconds: float):
        with self.lock:
            self.requests[(route, status)] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, rows: int):
        with self.lock:
            self.batch_size.observe(rows)

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP polyfuse_requests_total Requests answered, by route and status code.",
                     "# TYPE polyfuse_requests_total counter"]
            lines += [f'polyfuse_requests_total{{route="{r}",status="{s}"}} {n}'
                      for (r, s), n in sorted(self.requests.items())]
            lines += ["# HELP polyfuse_request_errors_total Requests answered with a 4xx or 5xx status.",
                      "# TYPE polyfuse_request_errors_total counter"]
            lines += [f'polyfuse_request_errors_total{{route="{r}",status="{s}"}} {n}'
                      for (r, s), n in sorted(self.requests.items()) if s >= 400]
            lines += ["# HELP polyfuse_request_latency_seconds Time from request to response.",
                      "# TYPE polyfuse_request_latency_seconds histogram"]
            for r, h in sorted(self.latency.items()):
                lines += h.lines("polyfuse_request_latency_seconds", f'route="{r}"')
            lines += ["# HELP polyfuse_batch_size Rows in each model call.", "# TYPE polyfuse_batch_size histogram"]
            lines += self.batch_size.lines("polyfuse_batch_size")
            lines += ["# HELP polyfuse_queue_depth Rows waiting for the model.", "# TYPE polyfuse_queue_depth gauge",
                      f"polyfuse_queue_depth {self.queue_depth()}",
                      "# HELP polyfuse_in_flight_requests Requests being handled.",
                      "# TYPE polyfuse_in_flight_requests gauge", f"polyfuse_in_flight_requests {self.in_flight}"]
        return "\n".join(lines) + "\n"
