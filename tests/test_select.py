from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.recommend.select import OBJECTIVES, Limit, Option, dominates, pareto_front, select

OBJ = ["ttft_ms", "decode_tps", "memory_mb", "perplexity"]


def opt(i, ttft, dec, mem, ppl, status="ok"):
    return Option(id=f"v{i}", label=f"v{i}", metrics={"ttft_ms": ttft, "decode_tps": dec, "memory_mb": mem, "perplexity": ppl}, status=status)


def test_dominance_and_front():
    a, b, c = opt(1, 100, 50, 200, 10), opt(2, 120, 40, 250, 11), opt(3, 90, 30, 150, 12)
    assert dominates(a.metrics, b.metrics, OBJ)
    assert not dominates(a.metrics, c.metrics, OBJ)
    assert {o.id for o in pareto_front([a, b, c], OBJ)} == {"v1", "v3"}


def test_reasons_name_the_winner_and_the_broken_limit():
    a, b, c = opt(1, 100, 50, 200, 10), opt(2, 120, 40, 250, 11), opt(3, 90, 30, 900, 12)
    crashed = opt(4, None, None, None, None, status="oom")
    pick = select([a, b, c, crashed], [Limit("memory_mb", 500, "max")], "balanced", 0.5)
    assert pick is a
    assert b.verdict.startswith("dominated by v1")
    assert "peak memory 900.0 MB > 500 MB (over by 400.0 MB)" in c.verdict
    assert crashed.verdict.startswith("not measured: oom")


def test_no_feasible_variant_gives_no_pick():
    a = opt(1, 100, 50, 200, 10)
    assert select([a], [Limit("decode_tps", 80, "min")], "speed", 0.5) is None
    assert "under by 30.0" in a.verdict


metric = st.floats(min_value=1, max_value=1000, allow_nan=False, allow_infinity=False)
options = st.lists(st.tuples(metric, metric, metric, metric), min_size=1, max_size=9)


@settings(max_examples=200, deadline=None)
@given(options, st.sampled_from(["balanced", "quality", "speed", "memory"]), st.floats(0, 1), metric, metric)
def test_front_pick_and_fallback_against_brute_force(rows, priority, alpha, max_mem, min_dec):
    opts = [opt(i, *r) for i, r in enumerate(rows)]
    limits = [Limit("memory_mb", max_mem, "max"), Limit("decode_tps", min_dec, "min")]
    pick = select(opts, limits, priority, alpha)
    # the front is exactly the set no other option dominates (brute force over all pairs)
    brute = {o.id for o in opts if not any(
        all((p.metrics[m] <= o.metrics[m]) if OBJECTIVES[m] == "min" else (p.metrics[m] >= o.metrics[m]) for m in OBJ)
        and any((p.metrics[m] < o.metrics[m]) if OBJECTIVES[m] == "min" else (p.metrics[m] > o.metrics[m]) for m in OBJ)
        for p in opts if p is not o)}
    assert {o.id for o in opts if o.on_front} == brute
    feasible = [o for o in opts if o.metrics["memory_mb"] <= max_mem and o.metrics["decode_tps"] >= min_dec]
    if not feasible:
        assert pick is None
        return
    assert pick in feasible and pick.on_front
    key = {
        "balanced": lambda o: -o.utility,
        "quality": lambda o: o.metrics["perplexity"],
        "speed": lambda o: -o.metrics["decode_tps"],
        "memory": lambda o: o.metrics["memory_mb"],
    }[priority]
    assert all(key(pick) <= key(o) + 1e-12 for o in feasible)


def test_every_pair_order_is_irrelevant():
    rows = [opt(i, *r) for i, r in enumerate([(1, 2, 3, 4), (2, 1, 3, 4), (1, 2, 3, 5)])]
    fronts = set()
    for perm in itertools.permutations(rows):
        fronts.add(frozenset(o.id for o in pareto_front(list(perm), OBJ)))
    assert len(fronts) == 1
