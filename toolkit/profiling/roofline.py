"""Roofline of a device: memory bandwidth and compute, measured once, and predictions from them.

Decoding reads every weight once per token, so decode tok/s <= bandwidth / weight bytes. Prefill is
compute-bound: about 2 FLOPs per token for each parameter a prompt token is multiplied by, which leaves out
the token embedding (a lookup) and the output projection (run for the prompt's last token only; 62% of
Gemma 3 270M's parameters), so prefill tok/s <= compute / (2 x those parameters).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # records.py imports Roofline from here
    from toolkit.records import Variant


class Roofline(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bandwidth_gbs: float
    gflops: float
    threads: int


def measure_bandwidth_gbs(threads: int, size_mb: int = 512, repeats: int = 5) -> float:
    """Sustained read bandwidth: `threads` threads each summing its slice of a buffer far larger than caches."""
    data = np.ones(size_mb * 2**20 // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, parts))  # touch every page first
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))  # numpy releases the GIL while summing
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def measure_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """float32 matrix-multiply throughput through numpy's BLAS (capped at `threads` threads)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads):
        a @ a
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure(threads: int) -> Roofline:
    return Roofline(bandwidth_gbs=round(measure_bandwidth_gbs(threads), 2), gflops=round(measure_gflops(threads), 1), threads=threads)


def roofline_decode_tps(weight_bytes: int, bandwidth_gbs: float) -> float:
    """Upper bound on decode tokens/s when each token streams all weights from memory once."""
    return bandwidth_gbs * 1e9 / weight_bytes


def roofline_prefill_tps(n_params: int, gflops: float) -> float:
    """Upper bound on prefill tokens/s at about 2 FLOPs per parameter (`prefill_params`) per token."""
    return gflops * 1e9 / (2 * n_params)


def prefill_params(variant: Variant) -> int | None:
    """The parameters each prompt token is multiplied by: all but the embedding and output projection, when
    compress found their size in the variant's files (details["embedding_params"])."""
    return variant.n_params - int(variant.details.get("embedding_params", 0)) if variant.n_params else None
