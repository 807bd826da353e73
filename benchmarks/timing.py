"""Timing shared by the benchmarks: best of several runs after a warm-up."""

from __future__ import annotations

import time
from typing import Any, Callable


def best_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
    """Seconds of the fastest of ``repeats`` calls (the least disturbed by other processes);
    one untimed call first lets allocators and lazy initialisation settle."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
