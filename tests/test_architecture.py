"""The layout rules a newcomer relies on: no import cycles, short modules, a flag for every budget field,
and a format added from outside the package runs through every stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests import fakes
from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.cli import app
from toolkit.errors import UserError
from toolkit.recipe import Budget, load_recipe
from toolkit.recommend.engine import recommend

PACKAGE = Path(__file__).resolve().parent.parent / "toolkit"
MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the toolkit modules it imports anywhere (also inside functions; not under TYPE_CHECKING)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for stmt in node.body for n in ast.walk(stmt)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("toolkit"):
                targets |= {owner(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names if alias.name.startswith("toolkit")}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_module_over_300_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_every_budget_field_has_a_recommend_flag():
    command = typer.main.get_command(app).commands["recommend"]
    flags = {opt for param in command.params for opt in param.opts}
    assert {f"--{name.replace('_', '-')}" for name in Budget.model_fields} <= flags


@pytest.mark.parametrize(("flag", "value", "field"), [("--alpha", "2", "budget.alpha"), ("--max-kl", "-1", "budget.max_kl"),
                                                       ("--priority", "fastest", "budget.priority"),
                                                       ("--min-decode-tps", "inf", "budget.min_decode_tps")])
def test_a_bad_budget_flag_names_the_field(tmp_path, flag, value, field):
    recipe = write_recipe(tmp_path / "r.yaml", "name: r\ncandidates: [{model: x}]\n")
    result = CliRunner().invoke(app, ["recommend", str(recipe), flag, value])
    assert isinstance(result.exception, UserError) and result.exception.field == field
    assert f"{recipe} + command-line flags" in str(result.exception)


def _fake_recipe(tmp_path: Path, variants: str) -> Path:
    source = fakes.fake_source(tmp_path / "fake-model")
    return write_recipe(tmp_path / "fake.yaml", f"""
        name: fake
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: {source}, name: fakelm}}]
        variants: {variants}
        device: {{prompt_lengths: [32], decode_tokens: 8, repeats: 3, warmup: 0, rounds: 1, max_rounds: 2, certify_runs: 1,
                  power: {{idle_w: 5, busy_w: 10}}}}
        quality: {{ctx: 64, chunks: 2}}
        cloud: {{enabled: false}}
        """)


def test_an_unregistered_format_is_an_unknown_recipe_field(tmp_path):
    with pytest.raises(UserError, match="variants.fake: unknown field"):
        load_recipe(_fake_recipe(tmp_path, "{fake: {}}"))


def test_a_format_registered_from_a_test_runs_compress_profile_recommend(tmp_path, monkeypatch):
    fakes.install(monkeypatch)
    recipe = load_recipe(_fake_recipe(tmp_path, "{gguf: null, fake: {speeds: [1, 4], noise: 0.5}}"))
    manifest = pipeline.compress(recipe)
    assert [v.quant for v in manifest.variants] == ["x1", "x4"] and {v.runtime for v in manifest.variants} == {"fake"}
    quality, _ = pipeline.evaluate(recipe)
    assert [q.status for q in quality] == ["ok", "ok"]
    assert quality[0].kl_mean == 0.0 and quality[1].kl_mean > 0.01  # the reference is the exact variant
    report, path = pipeline.profile(recipe)
    assert path.exists() and [p.status for p in report.profiles] == ["ok", "ok"]
    slow, fast = (p.decode_tps.median for p in report.profiles)
    assert fast > 2 * slow  # 4x less sleep per decode step
    rec = recommend(report, recipe.budget, recipe.costs)
    assert rec.answer == "edge" and rec.pick in {v.id for v in manifest.variants}
    assert report.certifications and report.certifications[0].variant_id == rec.pick
    rec_kl = recommend(report, recipe.budget.model_copy(update={"max_kl": 0.001}), recipe.costs)
    assert rec_kl.pick == manifest.variants[0].id  # only the exact variant meets a tight KL limit
