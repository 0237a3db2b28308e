"""The staged search measures only what can still be the pick, and never changes the answer: on the same cached
measurements, `search: staged` and `search: exhaustive` pick the same variant. Fake format and runtime (real
child processes, milliseconds per call); lm-eval is stood in for by a fixed accuracy per variant."""

from __future__ import annotations

import importlib

import pytest

from tests import fakes
from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.pipeline.fidelity import fidelity
from toolkit.pipeline.workspace import corpus, load_manifest
from toolkit.recipe import load_recipe
from toolkit.recommend.engine import recommend
from toolkit.records import EvalResult
from toolkit.render import evaluation_table

ACCURACY = {"x1": 0.40, "x2": 0.40, "x3": 0.45, "x4": 0.29, "x8": 0.30}  # by quant: x3 and x4 come out within noise


@pytest.fixture
def evaluated(monkeypatch):
    """Accuracy jobs answered in this process (lm-eval itself is tested elsewhere); the list of variants asked."""
    fakes.install(monkeypatch)
    accuracy = importlib.import_module("toolkit.pipeline.accuracy")
    asked: list[str] = []

    def stand_in(recipe, variant, folders, paths, executor):
        asked.append(variant.quant)
        return {task: EvalResult(key=paths[task][0], variant_id=variant.id, task=task, limit=recipe.accuracy.limit,
                                 runtime=variant.runtime, status="ok", metric="acc", value=ACCURACY[variant.quant],
                                 stderr=0.01, n=100, lm_eval_version="x") for task in folders}

    monkeypatch.setattr(accuracy, "task_dir", lambda name: None)
    monkeypatch.setattr(accuracy, "_eval_tasks", stand_in)
    return asked


def _recipe(tmp_path, search: str):
    source = fakes.fake_source(tmp_path / "model")
    return load_recipe(write_recipe(tmp_path / f"{search}.yaml", f"""
        name: search
        workspace: {tmp_path / 'ws'}
        search: {search}
        candidates: [{{model: {source}, name: m}}]
        variants: {{gguf: null, fake: {{speeds: [1, 2, 3, 4, 8], noise: 0.25, step_ms: 8}}}}
        device: {{prompt_lengths: [32], decode_tokens: 16, repeats: 3, warmup: 0, rounds: 2, max_rounds: 3,
                  certify_runs: 1, power: {{idle_w: 5, busy_w: 10}}}}
        quality: {{ctx: 64, chunks: 2}}
        accuracy: {{tasks: [standin]}}
        budget: {{min_decode_tps: 190, max_kl: 0.5, priority: balanced, alpha: 0.5}}
        cloud: {{enabled: false}}
        """))


def _rows(table) -> list[list[str]]:
    columns = [list(c.cells) for c in table.columns]
    return [list(row) for row in zip(*columns, strict=True)]


def _run(recipe):
    pipeline.compress(recipe)
    if recipe.search == "staged":
        report, _ = pipeline.search(recipe)
    else:
        pipeline.evaluate(recipe)
        report, _ = pipeline.profile(recipe)
    return report, recommend(report, recipe.budget, recipe.costs)


def test_staged_and_exhaustive_pick_the_same_and_staged_measures_less(tmp_path, evaluated):
    staged_report, staged = _run(_recipe(tmp_path, "staged"))
    by_quant = {r.quant: r for r in staged.rows}
    kl = {q.variant_id: q.kl_mean for q in staged_report.quality}
    # fidelity rules out the least faithful variant before any profiling: no timings, the reason on its row
    too_far = [q for q, r in by_quant.items() if kl[r.variant_id] > 0.5]
    assert too_far == ["x8"], kl
    assert by_quant["x8"].status == "skipped" and by_quant["x8"].verdict.startswith("not measured further: KL divergence")
    # ... and its fidelity scoring stopped half-way, once its KL over the whole text was sure to exceed 0.5
    stopped = {q.variant_id: q for q in staged_report.quality}[by_quant["x8"].variant_id]
    assert stopped.status == "stopped" and stopped.chunks == 1 and stopped.lower_bounds["kl"] > 0.5
    assert "at least: scoring stopped after 1 of 2 chunks" in by_quant["x8"].verdict
    recipe = _recipe(tmp_path, "staged")  # while still over the limit, the stopped score is reused as stored
    rescored = fidelity(recipe, load_manifest(recipe), corpus(recipe))
    assert next(q for q in rescored if q.variant_id == stopped.variant_id) == stopped
    table = evaluation_table(load_manifest(_recipe(tmp_path, "staged")), staged_report.quality, staged_report.accuracy)
    cells = next(row for row in _rows(table) if row[0].endswith("x8"))
    assert cells[2].startswith(">=") and cells[4] == f">={stopped.lower_bounds['kl']:.4f}", cells  # its bounds, not "ok"
    assert by_quant["x8"].metrics["decode_tps"] is None
    # the slowest is profiled, breaks min_decode_tps even 25% faster, and is not evaluated for accuracy
    assert by_quant["x1"].metrics["decode_tps"] < 190 / 1.25
    assert by_quant["x1"].verdict.startswith("not measured further: decode (p10)") and "still over with timings 25% better" in by_quant["x1"].verdict
    assert sorted(evaluated) == ["x2", "x3", "x4"]
    assert staged.pick is not None and staged.unmeasured == [] and "Provisional" not in staged.message
    # a looser budget at recommend time would not rule them out: the answer says it is provisional, and why
    budget = _recipe(tmp_path, "staged").budget
    looser = recommend(staged_report, budget.model_copy(update={"max_kl": 5.0, "min_decode_tps": 100}))
    assert sorted(looser.unmeasured) == sorted(by_quant[q].variant_id for q in ("x1", "x8"))
    assert "Provisional: the staged search did not measure" in looser.message
    assert all("this budget would not rule it out" in r.verdict for r in looser.rows if r.variant_id in looser.unmeasured)
    tighter = recommend(staged_report, budget.model_copy(update={"max_kl": 0.4}))  # still out: nothing pending
    assert tighter.unmeasured == [] and "Provisional" not in tighter.message

    evaluated.clear()
    exhaustive_report, exhaustive = _run(_recipe(tmp_path, "exhaustive"))
    assert sorted(evaluated) == ["x1", "x8"]  # what staged left out; the rest comes from the cache
    assert exhaustive.pick == staged.pick
    assert set(exhaustive.tied_with) == set(staged.tied_with)
    rows = {r.quant: r for r in exhaustive.rows}
    assert rows["x8"].status == "ok" and rows["x8"].violations and rows["x1"].violations  # measured, over budget
    full = {q.variant_id: q for q in exhaustive_report.quality}[rows["x8"].variant_id]  # scored whole: over its bound
    assert full.status == "ok" and full.chunks == 2 and full.kl_mean >= stopped.lower_bounds["kl"]
    assert full.perplexity >= stopped.lower_bounds["perplexity"] and full.bits_per_byte >= stopped.lower_bounds["bits_per_byte"]
    assert {q: r.win_probability for q, r in rows.items() if q not in ("x1", "x8")} == {
        q: r.win_probability for q, r in by_quant.items() if q not in ("x1", "x8")}

    evaluated.clear()
    _, again = _run(_recipe(tmp_path, "staged"))
    assert again.pick == staged.pick and evaluated == []  # a rerun measures nothing new
