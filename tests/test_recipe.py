from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_recipe
from toolkit.errors import UserError
from toolkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
name: t
candidates:
  - model: smollm2-135m-instruct
"""


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(recipe):
    assert load_recipe(recipe).candidates


def test_defaults(tmp_path):
    r = load_recipe(write_recipe(tmp_path / "r.yaml", GOOD))
    assert r.device.prompt_lengths == [128, 512]
    assert r.device.repeats >= 3
    assert r.variants.gguf.quants == ["F16", "Q8_0", "Q4_K_M"]


def test_a_variants_section_builds_the_formats_it_names_and_only_those(tmp_path):
    """An ONNX-only recipe is ONNX only: GGUF's defaults apply when the recipe has no `variants:` section."""
    onnx = load_recipe(write_recipe(tmp_path / "o.yaml", GOOD + "variants: {onnx: {precisions: [int4, fp32]}}\n"))
    assert onnx.variants.gguf is None and onnx.variants.onnx.precisions == ["int4", "fp32"]
    both = load_recipe(write_recipe(tmp_path / "b.yaml", GOOD + "variants: {onnx: {}, gguf: {quants: [Q8_0]}}\n"))
    assert both.variants.gguf.quants == ["Q8_0"] and both.variants.gptq is None
    again = load_recipe(write_recipe(tmp_path / "a.yaml", GOOD + "variants:\n"))  # an empty section: the defaults
    assert again.variants.gguf.quants == ["F16", "Q8_0", "Q4_K_M"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (GOOD + "colour: blue\n", "colour", "unknown field"),
        ("name: t\n", "candidates", "required"),
        (GOOD + "variants:\n  gguf:\n    quants: [Q4_K_M, Q9_X]\n", "variants.gguf.quants", "unknown quant type 'Q9_X'"),
        (GOOD + "device:\n  repeats: 0\n", "device.repeats", "greater than or equal to 1"),
        (GOOD + "device:\n  prompt_lengths: [-4]\n", "device.prompt_lengths", "between 1 and"),
        (GOOD + "device:\n  threads: many\n", "device.threads", "integer"),
        (GOOD + "budget:\n  max_memory_mb: -5\n", "budget.max_memory_mb", "greater than 0"),
        (GOOD + "budget:\n  priority: cheapest\n", "budget.priority", "balanced"),
        (GOOD + "budget:\n  min_decode_tps: .inf\n", "budget.min_decode_tps", "finite number"),
        (GOOD + "budget:\n  max_kl: .nan\n", "budget.max_kl", "finite number"),
        (GOOD + "budget:\n  ttft_prompt_tokens: 300\n", None, "not among device.prompt_lengths"),
        ("name: 'bad name!'\ncandidates: [{model: x}]\n", "name", "pattern"),
        ("name: t\ncandidates: [{model: x}, {model: y}, {model: x}]\n", "candidates", "candidates 0 and 2 are both 'x'"),
        ("name: t\ncandidates: [{model: x, name: ../../escape}]\n", "candidates.0.name", "part of file names"),
        ("name: t\ncandidates: [{model: x, name: 'my model'}]\n", "candidates.0.name", "letters, digits"),
        (GOOD + "budget:\n  min_accuracy: 0.3\n", None, "budget.min_accuracy needs accuracy.tasks"),
        (GOOD + "variants: {}\n", "variants", "names no format to build"),
        (GOOD + "variants: {gguf: null}\n", "variants", "names no format to build"),
    ],
)
def test_bad_fields_give_one_line_naming_file_and_field(tmp_path, body, field, words):
    path = write_recipe(tmp_path / "bad.yaml", body)
    with pytest.raises(UserError) as err:
        load_recipe(path)
    line = err.value.one_line()
    assert "\n" not in line
    assert str(path) in line
    if field:
        assert f": {field}:" in line
    assert words in line


def test_yaml_syntax_error_names_line(tmp_path):
    path = write_recipe(tmp_path / "broken.yaml", "name: t\ncandidates: [\n")
    with pytest.raises(UserError, match=r"broken.yaml: line \d+: not valid YAML"):
        load_recipe(path)


def test_missing_recipe(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
