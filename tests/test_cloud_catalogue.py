"""How a cloud option is assembled (toolkit/recommend/cloud.py), on a small price map written here instead of
LiteLLM's, so that every expected figure is worked out by hand: map prices per 1M tokens and fees, the
provider of a name, catalogue layers (defaults, provider, model), and every one-line error with its file
and field."""

from __future__ import annotations

import pytest
import yaml

from toolkit.errors import UserError
from toolkit.recipe import Cloud
from toolkit.recommend import cloud
from toolkit.recommend.cloud import Catalogue, CloudModel, closest_names, cloud_model, load_providers, map_prices

MAP = {
    "acme-chat": {"input_cost_per_token": 1.23456789012e-6, "output_cost_per_token": 2e-6, "litellm_provider": "acme"},
    "gpt-x": {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6, "litellm_provider": "openai", "mode": "chat"},
    "openai/gpt-y": {"input_cost_per_token": 3e-6, "output_cost_per_token": 6e-6, "litellm_provider": "router", "mode": "chat"},
    "embedder": {"input_cost_per_token": 1e-7, "output_cost_per_token": 0.0, "mode": "embedding"},
    "half-priced": {"input_cost_per_token": 1e-6, "mode": "chat", "litellm_provider": "acme"},
    "orphan": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6},
    "plain": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "litellm_provider": "acme"},
    "searcher": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "litellm_provider": "acme",
                 "input_cost_per_request": 0.001,
                 "search_context_cost_per_query": {"search_context_size_low": 0.005, "search_context_size_medium": 0.01}},
    **{f"abcd-model-{i}": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6} for i in range(7)},
    "abcdwxyz": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6},
}
LINE = "test price map (7 lines)"


@pytest.fixture(autouse=True)
def small_map(monkeypatch):
    monkeypatch.setattr(cloud, "price_map", lambda: (MAP, LINE))


CATALOGUE = {
    "defaults": {"ttft_ms": 500, "tokens_per_s": 50, "rtt_ms": 20},
    "by_provider": {"acme": {"ttft_ms": 300, "rtt_ms": 5, "label": "ACME Corp"}},
    "models": {
        "acme-chat": {"tokens_per_s": 99, "api_base": "http://127.0.0.1:9/v1", "accuracy": {"mmlu": 0.5},
                      "accuracy_source": "our eval"},
        "gpt-x": {"price": {"usd_per_1m_input": 0.5, "source": "our contract"}},
        "acme/plain": {"tokens_per_s": 77},
        "house": {"price": {"usd_per_1m_input": 0.2, "usd_per_1m_output": 0.3, "source": "invoice"}},
        "team/lab/house": {"price": {"usd_per_1m_input": 0.2, "usd_per_1m_output": 0.3, "source": "invoice"}},
        "made": {"provider": "acme", "price": {"usd_per_1m_input": 0.2, "usd_per_1m_output": 0.3, "source": "invoice"}},
        "searcher": {"price": {"usd_per_1m_input": 0.5, "usd_per_1m_output": 0.7, "source": "deal"}},
    },
}


def _model(name: str, **settings) -> CloudModel:
    return cloud_model(name, Catalogue.model_validate(CATALOGUE), Cloud(**settings), "recipe.yaml", "cloud.models")


def test_map_prices_per_million_tokens_and_fees():
    c = _model("acme-chat")
    assert c.usd_per_1m_input == 1.23456789  # 1.23456789012e-6 x 1e6, rounded to 9 decimals
    assert (c.usd_per_1m_output, c.usd_per_1m_cached_input, c.usd_per_request) == (2.0, None, 0.0)
    assert c.price_source == LINE  # nothing from the catalogue: the map's line alone
    assert map_prices(MAP["searcher"]) == {"usd_per_1m_input": 1.0, "usd_per_1m_output": 1.0, "usd_per_1m_cached_input": None,
                                           "usd_per_request": 0.001}
    assert map_prices(MAP["searcher"], "low")["usd_per_request"] == pytest.approx(0.006)  # request fee + search fee
    assert map_prices(MAP["searcher"], "high")["usd_per_request"] == pytest.approx(0.001)  # no price for "high"
    assert map_prices(MAP["acme-chat"], "low")["usd_per_request"] == 0.0


def test_provider_priors_and_catalogue_layers():
    c = _model("acme-chat")  # defaults, then provider acme, then the model: ttft 300, rtt 5, 99 tok/s
    assert (c.ttft_ms, c.rtt_ms, c.tokens_per_s) == (300, 5, 99)
    assert (c.provider, c.model, c.litellm_provider, c.id) == ("ACME Corp", "acme-chat", "acme", "acme-chat")
    assert (c.api_base, c.accuracy, c.accuracy_source) == ("http://127.0.0.1:9/v1", {"mmlu": 0.5}, "our eval")
    assert c.response_s(128) == pytest.approx(0.305 + 128 / 99)  # (5 + 300) ms to the first token, then 128 tokens
    assert c.first_token_ms() == 305
    orphan = _model("orphan")  # no provider in the map: "custom", the catalogue's defaults
    assert (orphan.provider, orphan.ttft_ms, orphan.rtt_ms, orphan.tokens_per_s) == ("custom", 500, 20, 50)


def test_negotiated_price_names_its_source_and_a_prefixed_name_finds_its_entry():
    c = _model("gpt-x")
    assert (c.usd_per_1m_input, c.usd_per_1m_output) == (0.5, 4.0)
    assert c.price_source == f"{LINE}; usd_per_1m_input from the catalogue: our contract"
    both = _model("searcher")
    assert (both.usd_per_1m_input, both.usd_per_1m_output, both.usd_per_request) == (0.5, 0.7, 0.001)
    assert both.price_source == f"{LINE}; usd_per_1m_input, usd_per_1m_output from the catalogue: deal"
    prefixed = _model("acme/plain")  # the map knows "plain" (provider acme), the catalogue "acme/plain"
    assert (prefixed.tokens_per_s, prefixed.usd_per_1m_input) == (77, 1.0)
    routed = _model("router/openai/gpt-y")  # provider "router", the map's name "openai/gpt-y" (it holds a slash)
    assert (routed.usd_per_1m_input, routed.litellm_provider) == (3.0, "router")


def test_a_model_the_map_lacks_takes_its_provider_from_the_name():
    assert (_model("house").provider, _model("house").price_source) == ("custom", "catalogue: invoice")
    lab = _model("team/lab/house")
    assert (lab.provider, lab.model, lab.id) == ("team", "lab/house", "team-lab-house")
    made = _model("made")
    assert (made.provider, made.ttft_ms, made.usd_per_1m_output) == ("ACME Corp", 300, 0.3)


@pytest.mark.parametrize(("name", "message"), [
    ("embedder", "recipe.yaml: cloud.models: 'embedder' has mode 'embedding' in LiteLLM's map, not a chat model"),
    ("half-priced", "recipe.yaml: cloud.models: 'half-priced' has no per-token price in LiteLLM's map"),
    ("zzzzzzzz", "recipe.yaml: cloud.models: LiteLLM's price map has no model 'zzzzzzzz' (closest: none); or give its "
                 "price in models/cloud/providers.yaml under models.zzzzzzzz.price"),
])
def test_errors_are_one_line_naming_file_and_field(name, message):
    with pytest.raises(UserError) as caught:
        _model(name)
    assert caught.value.one_line() == message


def test_closest_names_offers_five_down_to_half_similar():
    near = closest_names("abcd-model-x")
    assert len(near) == 5 and set(near) < {f"abcd-model-{i}" for i in range(7)}  # five of the seven equally close
    assert "abcdwxyz" in closest_names("abcdefgh")  # 4 of 8 letters in common: a ratio of exactly 0.5
    with pytest.raises(UserError, match=r"\(closest: abcd-model-\d, abcd-model-\d, abcd-model-\d, abcd-model-\d, abcd-model-\d\);"):
        _model("abcd-model-x")


def _write(path, data) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def test_load_providers_finds_the_catalogue_and_names_it_in_errors(tmp_path):
    _write(tmp_path / "cat.yaml", CATALOGUE)
    everything = load_providers("cat.yaml", tmp_path)  # relative to the recipe's folder; every model it lists
    assert [c.litellm_model for c in everything] == list(CATALOGUE["models"])
    named = load_providers("cat.yaml", tmp_path, Cloud(models=["orphan"], providers="cat.yaml"), "r.yaml")
    assert [c.id for c in named] == ["orphan"]
    with pytest.raises(UserError) as caught:
        load_providers("missing.yaml", tmp_path)
    assert caught.value.one_line() == f"{tmp_path / 'missing.yaml'}: cloud.providers: cloud catalogue not found"
    with pytest.raises(UserError) as caught:
        load_providers("missing.yaml", tmp_path, recipe_file="r.yaml")
    assert caught.value.one_line() == "r.yaml: cloud.providers: cloud catalogue not found"
    _write(tmp_path / "bad.yaml", CATALOGUE | {"defaults": {"ttft_ms": -1, "tokens_per_s": 50}})
    with pytest.raises(UserError) as caught:
        load_providers("bad.yaml", tmp_path)
    assert caught.value.file == str(tmp_path / "bad.yaml") and caught.value.field == "defaults.ttft_ms"
    _write(tmp_path / "lacking.yaml", CATALOGUE | {"models": {"qqqqqqqq": {}}})
    with pytest.raises(UserError) as caught:
        load_providers(str(tmp_path / "lacking.yaml"))  # the catalogue's own models: its file and models.<name>
    assert caught.value.one_line() == (
        f"{tmp_path / 'lacking.yaml'}: models.qqqqqqqq: LiteLLM's price map has no model 'qqqqqqqq' (closest: none); "
        f"or give its price in {tmp_path / 'lacking.yaml'} under models.qqqqqqqq.price")


def test_a_hand_priced_catalogue_cannot_be_asked_for_named_models(tmp_path):
    hand = {"providers": [{"id": "c", "provider": "P", "model": "m", "usd_per_1m_input": 1, "usd_per_1m_output": 2,
                           "ttft_ms": 100, "tokens_per_s": 10}]}
    _write(tmp_path / "hand.yaml", hand)
    assert [c.id for c in load_providers("hand.yaml", tmp_path)] == ["c"]
    with pytest.raises(UserError) as caught:
        load_providers("hand.yaml", tmp_path, Cloud(models=["gpt-x"]), "r.yaml")
    assert caught.value.one_line() == (
        f"r.yaml: cloud.models: {tmp_path / 'hand.yaml'} prices models by hand (providers: [...]); naming models "
        "needs a catalogue with defaults/models, as models/cloud/providers.yaml")


def test_cost_and_formula_with_cached_prompt_tokens():
    c = CloudModel(id="c", provider="P", model="m", usd_per_1m_input=0.1, usd_per_1m_output=0.4, usd_per_1m_cached_input=0.05,
                   cached_prompt_fraction=0.5, usd_per_request=0.001, ttft_ms=100, tokens_per_s=10)
    # by hand: 256 uncached x 0.1 + 256 cached x 0.05 + 128 x 0.4 = 25.6 + 12.8 + 51.2 = 89.6 per 1M, + $0.001
    assert c.cost_usd(512, 128) == pytest.approx(89.6e-6 + 0.001)
    assert c.formula(512, 128) == "(256 prompt x $0.1 + 256 cached x $0.05 + 128 output x $0.4) / 1M + $0.001 per request"
    plain = c.model_copy(update={"usd_per_1m_cached_input": None, "usd_per_request": 0.0})
    assert plain.cost_usd(512, 128) == pytest.approx((512 * 0.1 + 128 * 0.4) / 1e6)  # no cached price: all uncached
    assert plain.formula(512, 128) == "(512 prompt x $0.1 + 128 output x $0.4) / 1M"
