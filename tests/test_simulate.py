from __future__ import annotations

import pytest

from toolkit.simulate import SimCloud, SimDevice, Workload, compare, simulate

FAST = SimDevice(name="fast", ttft_s=0.2, decode_tps=100, rpm=600, window_s=60)
SLOW = SimDevice(name="slow", ttft_s=0.8, decode_tps=25, rpm=600, window_s=60)
CLOUD = SimCloud(ttft_s=0.5, decode_tps=80, usd_per_response=0.001)


def test_seeded_runs_repeat_exactly_and_another_seed_differs():
    w = Workload(rate_per_s=1.0, duration_s=300, seed=7)
    first = simulate([FAST, SLOW], CLOUD, w, "load_aware")
    assert first == simulate([FAST, SLOW], CLOUD, w, "load_aware")
    other = simulate([FAST, SLOW], CLOUD, w.model_copy(update={"seed": 8}), "load_aware")
    assert other != first and (other.requests, other.p50_s, other.p95_s) != (first.requests, first.p50_s, first.p95_s)


def test_light_load_stays_on_the_edge():
    r = simulate([FAST], CLOUD, Workload(rate_per_s=0.1, output_tokens=32, duration_s=600), "random")
    assert r.cloud_share == 0 and r.usd_per_1k == 0
    assert r.p50_s == pytest.approx(0.2 + 32 / 100, rel=0.05)


def test_rate_limit_sends_overflow_to_the_cloud():
    limited = FAST.model_copy(update={"rpm": 6, "window_s": 60})  # at most 0.1 req/s admitted
    r = simulate([limited], CLOUD, Workload(rate_per_s=1.0, output_tokens=16, duration_s=600), "random")
    assert 0.8 < r.cloud_share < 0.95
    assert r.usd_per_1k == pytest.approx(r.cloud_share * 1.0, rel=1e-6)


def test_load_aware_beats_random_under_bursts():
    w = Workload(arrival="onoff", rate_per_s=0.5, burst_factor=4, output_tokens=64, duration_s=1200, seed=3)
    results = {r.policy: r for r in compare([FAST, SLOW], CLOUD, w)}
    assert set(results) == {"random", "weighted", "load_aware"}
    assert results["load_aware"].p95_s < results["random"].p95_s
    assert all(0 <= u <= 1 for r in results.values() for u in r.utilisation.values())


@pytest.mark.parametrize("arrival", ["poisson", "onoff", "pareto"])
def test_arrival_processes_keep_the_mean_rate(arrival):
    r = simulate([FAST.model_copy(update={"slots": 50})], CLOUD, Workload(arrival=arrival, rate_per_s=2, duration_s=3000, output_tokens=1), "random")
    assert r.requests / 3000 == pytest.approx(2, rel=0.2)
