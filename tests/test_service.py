"""The recommendation service the CLI calls (toolkit/recommend/service.py): which device reports, which budget
(the recipe's plus command-line flags), which cloud options; one device or a fleet."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.conftest import write_recipe
from tests.factories import FP, ladder_report
from toolkit.errors import UserError
from toolkit.io import write_json
from toolkit.recipe import load_recipe
from toolkit.recommend import service

PROVIDERS = {"providers": [
    {"id": "dear", "provider": "B", "model": "big", "usd_per_1m_input": 1.0, "usd_per_1m_output": 4.0, "ttft_ms": 300, "tokens_per_s": 100},
    {"id": "cheap", "provider": "A", "model": "small", "usd_per_1m_input": 0.1, "usd_per_1m_output": 0.4, "ttft_ms": 300, "tokens_per_s": 100},
]}


def _recipe(tmp_path, cloud: str = "{providers: providers.yaml}", budget: str = "{max_ttft_ms: 1000, min_decode_tps: 10}"):
    (tmp_path / "providers.yaml").write_text(yaml.safe_dump(PROVIDERS), encoding="utf-8")
    return load_recipe(write_recipe(tmp_path / "r.yaml", f"""
        name: svc
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: x}}]
        budget: {budget}
        cluster: {{rpm: 20, rate_per_s: 0.3}}
        cloud: {cloud}
        """))


def _write_reports(tmp_path):
    fast = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    slow = ladder_report([(300, 2400, 12, 300, 30), (250, 2000, 20, 200, 35)])
    slow.device = FP.model_copy(update={"id": "dev2", "hostname": "pi"})
    folder = tmp_path / "ws" / "reports"
    paths = [folder / "device-fast.json", folder / "device-slow.json"]
    write_json(paths[0], fast)
    write_json(paths[1], slow)
    os.utime(paths[0], (1_000_000, 1_000_000))  # the fast device's report is the older one
    os.utime(paths[1], (2_000_000, 2_000_000))
    return paths


def test_providers_are_the_recipes_catalogue_or_none(tmp_path):
    assert [p.id for p in service.providers(_recipe(tmp_path))] == ["dear", "cheap"]
    assert service.providers(_recipe(tmp_path, cloud="{enabled: false, providers: providers.yaml}")) == []


def test_the_latest_report_is_the_newest_file(tmp_path):
    recipe = _recipe(tmp_path)
    with pytest.raises(UserError) as caught:
        service.latest_report(recipe)
    assert caught.value.one_line() == (f"{tmp_path / 'ws' / 'reports'}: no device report yet; run `toolkit profile "
                                       f"{recipe.path}` or pass --report")
    fast, slow = _write_reports(tmp_path)
    assert service.latest_report(recipe) == slow
    os.utime(fast, (3_000_000, 3_000_000))
    assert service.latest_report(recipe) == fast
    oldest = tmp_path / "ws" / "reports" / "device-old.json"
    oldest.write_bytes(fast.read_bytes())
    os.utime(oldest, (500_000, 500_000))
    assert service.latest_report(recipe) == fast  # the newest of three
    assert [r.device.id for r in service.device_reports(recipe)] == ["dev1"]
    assert [r.device.id for r in service.device_reports(recipe, [tmp_path / "ws" / "reports"])] == ["dev1", "dev2"]


def test_flags_override_the_recipe_and_none_keeps_it(tmp_path):
    recipe = _recipe(tmp_path)
    assert service.budget(recipe) is recipe.budget
    assert service.budget(recipe, max_ttft_ms=None, min_decode_tps=None) is recipe.budget
    changed = service.budget(recipe, min_decode_tps=30.0, priority="speed")
    assert (changed.max_ttft_ms, changed.min_decode_tps, changed.priority) == (1000, 30.0, "speed")
    assert recipe.budget.min_decode_tps == 10  # the recipe itself is left as it was
    cluster = service.cluster(recipe, rate_per_s=2.0, arrival=None)
    assert (cluster.rpm, cluster.rate_per_s) == (20, 2.0)
    with pytest.raises(UserError) as caught:
        service.budget(recipe, alpha=2.0)
    assert caught.value.field == "budget.alpha" and f"{recipe.path} + command-line flags" in str(caught.value)


def test_one_recommendation_per_report_with_the_recipes_clouds(tmp_path):
    recipe = _recipe(tmp_path)
    paths = _write_reports(tmp_path)
    recs = service.recommendations(recipe, paths=paths)
    assert [r.device_id for r in recs] == ["dev1", "dev2"]
    assert all(r.budget == recipe.budget for r in recs) and all({c.id for c in r.cloud_rows} == {"dear", "cheap"} for r in recs)
    # by hand: decode p10 is 0.92 x the median, so at 20 tok/s only the fast device's variants and its slow
    # device's Q1 (20 * 0.92 = 18.4 >= 15) make a budget of 15; the slow Q0 (12 * 0.92) does not
    strict = service.budget(recipe, min_decode_tps=15.0, max_ttft_ms=3000.0)
    picks = [r.pick for r in service.recommendations(recipe, strict, paths)]
    assert picks[1] == "v1" and picks[0] in {"v0", "v1"}
    none = service.recommend_each(recipe, [service.device_reports(recipe, paths)[1]], service.budget(recipe, min_decode_tps=1000.0))
    assert none[0].answer == "none"  # the clouds decode at 100 tok/s
    assert [r.device_id for r in service.recommendations(recipe)] == ["dev2"]  # default: this device's latest


def test_the_recipes_costs_price_the_edge(tmp_path):
    recipe = _recipe(tmp_path)
    dear = recipe.model_copy(update={"costs": recipe.costs.model_copy(update={"electricity_usd_per_kwh": 2.5})})
    paths = _write_reports(tmp_path)
    base, tenfold = service.recommend_each(recipe, [service.device_reports(recipe, paths)[0]])[0], \
        service.recommend_each(dear, [service.device_reports(dear, paths)[0]])[0]
    for a, b in zip(base.rows, tenfold.rows, strict=True):  # energy is priced at 10x the electricity
        assert b.metrics["cost_per_1k_usd"] == pytest.approx(10 * a.metrics["cost_per_1k_usd"], rel=1e-3)
    assert tenfold.costs.electricity_usd_per_kwh == 2.5


def test_a_budget_the_reports_cannot_serve_names_where_it_came_from(tmp_path):
    recipe = _recipe(tmp_path)
    reports = service.device_reports(recipe, _write_reports(tmp_path))
    with pytest.raises(UserError) as caught:
        service.recommend_each(recipe, reports, service.budget(recipe, ttft_prompt_tokens=7))
    assert caught.value.one_line().startswith(f"{recipe.path} + command-line flags: budget.ttft_prompt_tokens: "
                                              "no TTFT measured at 7 tokens")


def test_a_budget_on_a_figure_nothing_has_is_an_error_not_a_cloud_answer(tmp_path):
    """Without the check every variant 'breaks' min_accuracy for want of a measurement and the cloud wins."""
    recipe = _recipe(tmp_path)
    reports = service.device_reports(recipe, _write_reports(tmp_path))  # perplexity scored; no KL, no accuracy
    unmetered = [r.model_copy(update={"power": None}) for r in reports]  # no meter and no power model: no energy
    for flag, figure, why, on in (("min_accuracy", "mean accuracy", "accuracy.tasks names no task", reports),
                                  ("max_kl", "KL divergence", "`toolkit evaluate` has not scored fidelity", reports),
                                  ("max_energy_j", "energy per response", "no energy meter read here", unmetered)):
        with pytest.raises(UserError) as caught:
            service.recommend_each(recipe, on, service.budget(recipe, **{flag: 0.3}))
        assert caught.value.one_line().startswith(f"{recipe.path} + command-line flags: budget.{flag}: no variant in the "
                                                  f"device report has {figure} to hold to it ({why}")
    assert [rec.answer for rec in service.recommend_each(recipe, reports, service.budget(recipe, max_energy_j=1e6))] \
        == [rec.answer for rec in service.recommend_each(recipe, reports)]  # with a power model, energy is held to it
    held = service.recommend_each(recipe, reports, service.budget(recipe, max_perplexity=32))  # a measured figure
    assert [rec.answer for rec in held] == [rec.answer for rec in service.recommend_each(recipe, reports)]


def test_a_recipe_that_limits_accuracy_must_name_tasks(tmp_path):
    with pytest.raises(UserError) as caught:
        _recipe(tmp_path, budget="{min_accuracy: 0.3}")
    assert caught.value.one_line() == (f"{tmp_path / 'r.yaml'}: budget.min_accuracy needs accuracy.tasks, and the recipe "
                                       "names none (`toolkit tasks` lists the offline ones)")


def test_a_report_from_another_recipe_is_flagged_and_kept_apart(tmp_path):
    from toolkit.reports import write_reports

    recipe = _recipe(tmp_path)  # recipe "svc"; the reports were profiled for recipe "r"
    foreign = service.recommendations(recipe, paths=[_write_reports(tmp_path)[0]])[0]
    assert foreign.notes[0] == (f"Recipe: the device report comes from recipe 'r'; the budget, costs and cloud options "
                                f"here are those of {recipe.path} (recipe 'svc'); its reports folder keeps them apart "
                                "from its own (recommendation-<device>-from-r)")
    own = service.recommendations(recipe.model_copy(update={"name": "r"}), paths=[_write_reports(tmp_path)[0]])[0]
    assert not any(n.startswith("Recipe: ") for n in own.notes)
    folder = tmp_path / "out"
    assert write_reports(own, folder, images=False, recipe="r")["json"].name == f"recommendation-{own.device_id}.json"
    assert write_reports(foreign, folder, images=False, recipe="svc")["json"].name == f"recommendation-{own.device_id}-from-r.json"
