"""`device.llama_cpp.n_gpu_layers: auto`: the fewest layers on the GPU that meet the budget's decode target,
found by bisection over llama-bench's tg (FiTuna's idea: offload only what the target needs, and leave the
rest of the GPU's memory, on boards where it is shared, to everything else).

Decode speed rises with the layers offloaded, so bisection needs about log2(layers) llama-bench runs. The
target is met on the slow end (p10 of the repeats), as the budget checks it.
"""

from __future__ import annotations

from collections.abc import Callable

from toolkit.stat import percentile


def fewest_layers(decode_tps: Callable[[int], list[float]], n_layers: int, target: float | None
                  ) -> tuple[int, dict[int, float], str]:
    """(layers, p10 decode tok/s per layer count tried, why). `decode_tps(layers)` measures tg's repeats;
    `n_layers` counts the output layer too (llama.cpp's -ngl n_layer + 1 is everything)."""
    tried: dict[int, float] = {}

    def meets(layers: int) -> bool:
        tried[layers] = percentile(sorted(decode_tps(layers)), 10)
        return target is None or tried[layers] >= target

    if target is None:
        meets(n_layers)
        return n_layers, tried, "no decode target in the budget: every layer on the GPU"
    if not meets(n_layers):
        return n_layers, tried, f"even every layer on the GPU decodes {tried[n_layers]:.1f} tok/s (p10), below {target:g}"
    if meets(0):
        return 0, tried, f"the CPU alone meets {target:g} tok/s (p10 {tried[0]:.1f})"
    low, high = 0, n_layers  # low fails, high meets
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if meets(mid) else (mid, high)
    return high, tried, f"{high} of {n_layers} layers meet {target:g} tok/s (p10 {tried[high]:.1f}; {low}: {tried[low]:.1f})"
