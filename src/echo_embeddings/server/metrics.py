"""Counters of the server and its scheduler, rendered in Prometheus' text exposition format."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from ..scheduler import LATENCY_BUCKETS, Histogram

PREFIX = "echo_embeddings"


class ServerMetrics:
    """Requests by status, texts and tokens embedded, and the end-to-end latency of a request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses: Counter[int] = Counter()
        self.texts = 0
        self.tokens = 0
        self.latency = Histogram(LATENCY_BUCKETS)

    def record(self, status: int, seconds: float, texts: int = 0, tokens: int = 0) -> None:
        with self._lock:
            self.responses[status] += 1
            self.texts += texts
            self.tokens += tokens
            if status == 200:
                self.latency.observe(seconds)

    def render(self, scheduler: dict[str, Any]) -> str:
        """The text format: counters, the queue-depth gauge and four histograms."""
        with self._lock:
            lines = [f"# HELP {PREFIX}_requests_total Embedding requests answered, by HTTP status.", f"# TYPE {PREFIX}_requests_total counter"]
            lines += [f'{PREFIX}_requests_total{{status="{status}"}} {count}' for status, count in sorted(self.responses.items())]
            lines += _counter("texts_total", "Texts embedded.", self.texts)
            lines += _counter("tokens_total", "Input tokens embedded, in the model's tokens.", self.tokens)
            lines += _histogram("request_seconds", "Time from a request's arrival to its answer (successful requests).", self.latency)
        lines += _counter("scheduler_runs_total", "Merged runs of the model (each one or more token-budget batches).", scheduler["runs"])
        lines += _counter("scheduler_rejected_total", "Requests refused because the queue was full.", scheduler["rejected"])
        lines += _counter("scheduler_cancelled_total", "Requests dropped before running because their client went away.", scheduler["cancelled"])
        lines += _gauge("queue_texts", "Texts waiting for the model.", scheduler["queued_texts"])
        lines += _gauge("run_token_budget", "Tokens the scheduler merges into one run now (it follows the measured speed).", scheduler["run_tokens"])
        lines += _histogram("run_texts", "Texts merged into one run of the model.", _as_histogram(scheduler["run_texts"]))
        lines += _histogram("run_seconds", "Time of one run of the model; its sum over the elapsed time is how busy the model was.", _as_histogram(scheduler["run_seconds"]))
        lines += _histogram("scheduler_wait_seconds", "Time from queueing to vectors, inside the scheduler.", _as_histogram(scheduler["latency_seconds"]))
        return "\n".join(lines) + "\n"


def _counter(name: str, help_text: str, value: int) -> list[str]:
    return [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} counter", f"{PREFIX}_{name} {value}"]


def _gauge(name: str, help_text: str, value: int) -> list[str]:
    return [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} gauge", f"{PREFIX}_{name} {value}"]


def _as_histogram(parts: tuple) -> Histogram:
    bounds, counts, total, count = parts
    histogram = Histogram(tuple(bounds))
    histogram.counts, histogram.total, histogram.count = list(counts), total, count
    return histogram


def _histogram(name: str, help_text: str, histogram: Histogram) -> list[str]:
    lines = [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} histogram"]
    lines += [f'{PREFIX}_{name}_bucket{{le="{bound:g}"}} {count}' for bound, count in zip(histogram.bounds, histogram.counts)]
    lines += [f'{PREFIX}_{name}_bucket{{le="+Inf"}} {histogram.count}', f"{PREFIX}_{name}_sum {histogram.total:.6f}", f"{PREFIX}_{name}_count {histogram.count}"]
    return lines
