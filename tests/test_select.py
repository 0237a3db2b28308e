from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.recommend.select import OBJECTIVES, Limit, Option, dominates, pareto_front, select

OBJ = ["ttft_ms", "decode_tps", "memory_mb", "perplexity"]
METRICS = [*OBJECTIVES, "kl"]  # every Pareto objective plus a metric that is not one
PRIORITIES = ["balanced", "pcr", "cost", "quality", "speed", "memory"]


def opt(i, ttft, dec, mem, ppl, status="ok", **more):
    metrics = {"ttft_ms": ttft, "decode_tps": dec, "memory_mb": mem, "perplexity": ppl, **more}
    return Option(id=f"v{i}", label=f"v{i}", metrics=metrics, status=status)


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
    assert "deploy memory 900.0 MB > 500 MB (over by 400.0 MB)" in c.verdict
    assert crashed.verdict.startswith("not measured: oom")


def test_no_feasible_variant_gives_no_pick():
    a = opt(1, 100, 50, 200, 10)
    assert select([a], [Limit("decode_tps", 80, "min")], "speed", 0.5) is None
    assert "under by 30.0" in a.verdict


def test_a_variant_over_a_kl_limit_cannot_knock_out_a_feasible_one():
    """The bug of issue 9: a dominated the only feasible variant b, so the old front-then-budget order gave None."""
    a = opt(1, 100, 50, 200, 10, kl=0.5)
    b = opt(2, 110, 45, 210, 11, kl=0.05)
    pick = select([a, b], [Limit("kl", 0.1, "max")], "balanced", 0.5)
    assert pick is b and b.on_front and not a.on_front
    assert a.verdict.startswith("breaks the budget: KL divergence 0.5000 nats > 0.1 nats")


def test_over_budget_variants_do_not_move_the_utility_or_the_pick():
    # c is far faster but over the memory limit: with normalisation over all variants its speed would shrink
    # the speed term and hand the pick to the higher-fidelity a; normalised over the feasible, b wins.
    a, b = opt(1, 100, 10, 200, 10), opt(2, 100, 20, 200, 12)
    c = opt(3, 100, 1000, 900, 10)
    limits = [Limit("memory_mb", 500, "max")]
    assert select([a, b, c], limits, "balanced", 0.5) is b
    assert math.isclose(b.utility, 0.5 * 10 / 12 + 0.5) and math.isclose(a.utility, 0.5 + 0.5 * (10 / 20 + 1) / 2)


# --- property tests against a brute-force reference written here, independent of the selection code ---

VALUES = [None, 0.0, 1.0, 2.0, 2.0, 3.0, 3.0]  # small set: ties are common; None is a missing metric
option_rows = st.lists(
    st.tuples(st.fixed_dictionaries({m: st.sampled_from(VALUES) for m in METRICS}),
              st.sampled_from(["ok", "ok", "ok", "crash"]), st.sampled_from([None, 1.0, 2.0]),
              st.sampled_from(["a", "a", "a", "b"])),
    min_size=1, max_size=8,
)
limit_lists = st.lists(
    st.builds(Limit, st.sampled_from(METRICS), st.sampled_from([0.5, 1.0, 2.0, 3.0]), st.sampled_from(["max", "min"])),
    max_size=4,
)
alphas = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1))


def build(rows) -> list[Option]:
    return [Option(id=f"v{i}", label=f"v{i}", metrics=dict(m), status=s, size_mb=size, model=model)
            for i, (m, s, size, model) in enumerate(rows)]


def ref_likelihood(options: list[Option]) -> str:
    """README: perplexity compares one model's variants; across models, bits per byte."""
    return "bits_per_byte" if len({o.model for o in options if o.status == "ok"}) > 1 else "perplexity"


def ref_objectives(feasible: list[Option]) -> list[str]:
    other = {"perplexity", "bits_per_byte"} - {ref_likelihood(feasible)}
    return [m for m in OBJECTIVES if m not in other and all(o.metrics[m] is not None for o in feasible)]


def ref_feasible(o: Option, limits: list[Limit]) -> bool:
    if o.status != "ok":
        return False
    for lim in limits:
        v = o.metrics[lim.metric]
        if v is None or (v > lim.bound if lim.kind == "max" else v < lim.bound):
            return False
    return True


def ref_utility(o: Option, feasible: list[Option], alpha: float) -> float | None:
    """README: U = alpha * quality + (1 - alpha) * responsiveness, each the mean of the ratios to the best
    option of the basis (a signal counts when every basis option has it and its best is > 0; an option
    without a counted signal, or at 0 on a lower-is-better one, has no utility)."""
    quality, speed = [], []
    for m, bucket, higher in (("accuracy", quality, True), (ref_likelihood(feasible), quality, False),
                              ("decode_tps", speed, True), ("ttft_ms", speed, False)):
        values = [p.metrics[m] for p in feasible]
        if None in values:
            continue
        best = max(values) if higher else min(values)
        if best <= 0:
            continue
        if o.metrics[m] is None or (not higher and o.metrics[m] <= 0):
            return None
        bucket.append(o.metrics[m] / best if higher else best / o.metrics[m])
    q = sum(quality) / len(quality) if quality else 1.0
    s = sum(speed) / len(speed) if speed else 1.0
    return alpha * q + (1 - alpha) * s


def ref_score(o: Option, u: float, priority: str, likelihood: str = "perplexity") -> tuple[float, ...]:
    """Lower is better; a missing figure is the worst."""
    m = o.metrics

    def low(v):
        return math.inf if v is None else v

    def high(v):
        return math.inf if v is None else -v

    cost = m["cost_per_1k_usd"]
    pcr = u / cost if cost else None
    return {
        "balanced": (-u,),
        "pcr": (high(pcr), -u),
        "cost": (low(cost), high(m["decode_tps"])),
        "quality": (high(m["accuracy"]), low(m[likelihood]), high(m["decode_tps"])),
        "speed": (high(m["decode_tps"]), low(m["ttft_ms"])),
        "memory": (low(m["memory_mb"]), high(m["decode_tps"])),
    }[priority]


def beats(a: tuple[float, ...], b: tuple[float, ...], tol: float = 1e-9) -> bool:
    for x, y in zip(a, b, strict=True):
        if x < y - tol:
            return True
        if x > y + tol:
            return False
    return False


def ref_dominates(p: Option, o: Option, objectives: list[str]) -> bool:
    at_least = all(p.metrics[m] <= o.metrics[m] if OBJECTIVES[m] == "min" else p.metrics[m] >= o.metrics[m] for m in objectives)
    strictly = any(p.metrics[m] < o.metrics[m] if OBJECTIVES[m] == "min" else p.metrics[m] > o.metrics[m] for m in objectives)
    return at_least and strictly


@settings(max_examples=600, deadline=None)
@given(option_rows, limit_lists, st.sampled_from(PRIORITIES), alphas)
def test_pick_is_the_best_feasible_option_by_brute_force(rows, limits, priority, alpha):
    opts = build(rows)
    pick = select(opts, limits, priority, alpha)
    feasible = [o for o in opts if ref_feasible(o, limits)]
    assert (pick is not None) == bool(feasible)
    assert {o.id for o in opts if o.status == "ok" and not o.violations} == {o.id for o in feasible}
    utility = {o.id: ref_utility(o, feasible, alpha) for o in feasible}
    for o in feasible:  # the utility the report prints is the one the pick maximises
        assert math.isclose(o.utility, utility[o.id], rel_tol=1e-9, abs_tol=1e-12)
    if pick is None:
        assert all(o.verdict.startswith(("breaks the budget", "not measured")) for o in opts)
        measured = [o for o in opts if o.status == "ok"]  # with nothing in budget, utility is relative to all measured
        for o in measured:
            expected = ref_utility(o, measured, alpha)
            assert o.utility is None if expected is None else math.isclose(o.utility, expected, rel_tol=1e-9, abs_tol=1e-12)
        return
    assert pick.status == "ok" and ref_feasible(pick, limits)
    lik = ref_likelihood(feasible)
    best = ref_score(pick, utility[pick.id], priority, lik)
    assert not any(beats(ref_score(o, utility[o.id], priority, lik), best) for o in feasible)
    # the front flag is the Pareto front of the feasible options over the objectives they all have
    objectives = ref_objectives(feasible)
    front = {o.id for o in feasible if not any(ref_dominates(p, o, objectives) for p in feasible)}
    # among exact ties on the priority: undominated first, then lower KL, lower perplexity (bits per byte
    # across models), smaller file, id
    tied = [o for o in feasible if not beats(best, ref_score(o, utility[o.id], priority, lik))]

    def low(v):
        return math.inf if v is None else v

    assert pick is min(tied, key=lambda o: (o.id not in front, low(o.metrics["kl"]), low(o.metrics[lik]),
                                            low(o.size_mb), o.id))
    assert {o.id for o in opts if o.on_front} == front
    for o in opts:
        if o.status != "ok":
            assert o.verdict.startswith("not measured")
        elif o is pick:
            assert o.verdict.startswith("PICK")
        elif o not in feasible:
            assert o.verdict.startswith("breaks the budget: ")
        elif o.id in front:
            assert o.verdict.startswith("on the front")
        else:
            winner = next(p for p in feasible if p.id == o.dominated_by)
            assert ref_dominates(winner, o, objectives) and o.verdict.startswith(f"dominated by {winner.label} (")


@settings(max_examples=300, deadline=None)
@given(option_rows, limit_lists, st.sampled_from(PRIORITIES), alphas, st.randoms(use_true_random=False))
def test_pick_ignores_input_order_and_over_budget_variants(rows, limits, priority, alpha, rnd):
    first = build(rows)
    pick = select(first, limits, priority, alpha)
    shuffled = build(rows)
    rnd.shuffle(shuffled)
    again = select(shuffled, limits, priority, alpha)
    assert (pick and pick.id) == (again and again.id)
    # every option's verdict (with the dominator it names), front flag and utility, whatever the order
    same = {o.id: (o.verdict, o.on_front, o.dominated_by, o.utility, o.violations) for o in first}
    assert {o.id: (o.verdict, o.on_front, o.dominated_by, o.utility, o.violations) for o in shuffled} == same
    only_feasible = [o for o in build(rows) if ref_feasible(o, limits)]
    alone = select(only_feasible, limits, priority, alpha)
    assert (pick and pick.id) == (alone and alone.id)


def test_the_named_dominator_is_on_the_front_whatever_the_order():
    """a is dominated by b and c, b by c: the verdict should name c, on the front, in every order. Memory is an
    objective that utility ignores, so b and c tie on utility and only the front flag separates them."""
    import itertools

    for order in itertools.permutations(range(3)):
        made = [Option(id=i, label=i, metrics={"memory_mb": m}) for i, m in (("a", 30.0), ("v9", 20.0), ("v1", 10.0))]
        select([made[k] for k in order], [], "balanced", 0.5)
        assert made[0].dominated_by == "v1" and made[1].dominated_by == "v1", order


def test_priority_figures_within_the_tolerance_are_equal_and_the_next_figure_decides():
    """Found by the brute-force property test (alpha 1e-9): PCRs 1.3e-10 apart are the same PCR; the higher
    utility, the next figure of the pcr priority, decides, as the reference does."""
    from toolkit.recommend.select import TOLERANCE, ranking

    a = Option(id="a", label="a", metrics={"ttft_ms": 2.0, "decode_tps": 2.0})
    b = Option(id="b", label="b", metrics={"ttft_ms": 2.0, "decode_tps": 3.0})
    a.utility, a.pcr = 0.666666667, 0.3333333335
    b.utility, b.pcr = 0.9999999996666668, 0.33333333322222225
    assert [o.id for o in ranking([a, b], "pcr")] == ["b", "a"]
    b.pcr = a.pcr - 2 * TOLERANCE  # further apart than the tolerance: the PCR decides
    assert [o.id for o in ranking([a, b], "pcr")] == ["a", "b"]
