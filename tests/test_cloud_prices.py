"""Cloud prices from LiteLLM's offline price map, the catalogue of what it lacks, and the paper's Table I."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import write_recipe
from tests.factories import ladder_report
from toolkit.cluster import deploy_files, pick_cloud
from toolkit.errors import UserError
from toolkit.paper import table_one
from toolkit.recipe import Budget, Costs, load_recipe
from toolkit.recommend.cloud import price_map
from toolkit.recommend.engine import recommend
from toolkit.recommend.service import providers as _providers
from toolkit.reports import markdown

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_cost() -> dict:
    price_map()  # sets LITELLM_LOCAL_MODEL_COST_MAP before litellm is imported: the bundled map, never a download
    import litellm

    return litellm.model_cost


def _clouds(tmp_path: Path, cloud: str, catalogue: str | None = None):
    if catalogue is not None:
        (tmp_path / "cat.yaml").write_text(catalogue, encoding="utf-8")
        cloud = cloud.rstrip("}") + ", providers: cat.yaml}"
    return _providers(load_recipe(write_recipe(tmp_path / "r.yaml", f"name: t\ncandidates: [{{model: x}}]\ncloud: {cloud}\n")))


NAMES = ["gpt-4", "gpt-4o-mini", "claude-haiku-4-5", "gemini/gemini-2.5-flash-lite", "groq/openai/gpt-oss-20b"]


def test_prices_come_from_the_map_for_any_name(tmp_path, model_cost):
    clouds = _clouds(tmp_path, "{models: [" + ", ".join(NAMES) + "]}")
    assert [c.litellm_model for c in clouds] == NAMES
    for name, c in zip(NAMES, clouds, strict=True):
        entry = model_cost[name]
        assert c.usd_per_1m_input == pytest.approx(entry["input_cost_per_token"] * 1e6)
        assert c.usd_per_1m_output == pytest.approx(entry["output_cost_per_token"] * 1e6)
        assert c.cost_usd(512, 128) == pytest.approx(512 * entry["input_cost_per_token"] + 128 * entry["output_cost_per_token"])
        assert c.price_source.startswith("LiteLLM ") and "price map" in c.price_source
    groq = clouds[-1]
    assert (groq.provider, groq.model, groq.litellm_provider, groq.tokens_per_s) == ("Groq", "openai/gpt-oss-20b", "groq", 750)


def test_provider_prefixed_name_resolves(tmp_path, model_cost):
    (c,) = _clouds(tmp_path, "{models: [openai/gpt-4o-mini]}")
    assert c.usd_per_1m_output == pytest.approx(model_cost["gpt-4o-mini"]["output_cost_per_token"] * 1e6)
    assert (c.provider, c.model, c.accuracy["mmlu"]) == ("OpenAI", "gpt-4o-mini", 0.82)  # priors and accuracy found too


def test_unknown_name_is_one_line_with_the_closest_names(tmp_path):
    with pytest.raises(UserError) as err:
        _clouds(tmp_path, "{models: [gpt-4o-mini, gpt-4o-mnii]}")
    line = err.value.one_line()
    assert line.startswith(f"{tmp_path / 'r.yaml'}: cloud.models: LiteLLM's price map has no model 'gpt-4o-mnii' (closest: gpt-4o-mini")
    assert "\n" not in line
    with pytest.raises(UserError, match="cloud.models: 'text-embedding-3-small' has mode 'embedding'"):
        _clouds(tmp_path, "{models: [text-embedding-3-small]}")


CATALOGUE = """
defaults: {ttft_ms: 500, tokens_per_s: 50, rtt_ms: 20}
models:
  gpt-4o-mini:
    price: {usd_per_1m_input: 0.1, source: "our 2025 contract"}
    tokens_per_s: 99
  acme/house-model:
    provider: acme
    price: {usd_per_1m_input: 0.2, usd_per_1m_output: 0.3, source: "acme invoice"}
  acme/half-priced: {price: {usd_per_1m_input: 0.2, source: "x"}}
"""


def test_negotiated_price_overrides_the_map(tmp_path, model_cost):
    (c,) = _clouds(tmp_path, "{models: [gpt-4o-mini]}", CATALOGUE)
    assert c.usd_per_1m_input == 0.1
    assert c.usd_per_1m_output == pytest.approx(model_cost["gpt-4o-mini"]["output_cost_per_token"] * 1e6)
    assert "usd_per_1m_input from the catalogue: our 2025 contract" in c.price_source
    assert (c.ttft_ms, c.tokens_per_s, c.rtt_ms) == (500, 99, 20)


def test_a_model_the_map_lacks_needs_its_full_price(tmp_path):
    (c,) = _clouds(tmp_path, "{models: [acme/house-model]}", CATALOGUE)
    assert (c.provider, c.model, c.price_source) == ("acme", "house-model", "catalogue: acme invoice")
    assert c.cost_usd(1000, 1000) == pytest.approx(0.0005)
    with pytest.raises(UserError, match="no model 'acme/half-priced'"):
        _clouds(tmp_path, "{models: [acme/half-priced]}", CATALOGUE)


def test_cached_prompt_tokens_priced_as_litellm_bills_them(tmp_path, model_cost):
    import litellm

    (c,) = _clouds(tmp_path, "{models: [gpt-4o-mini], cached_prompt_fraction: 0.5}")
    entry = model_cost["gpt-4o-mini"]
    assert c.usd_per_1m_cached_input == pytest.approx(entry["cache_read_input_token_cost"] * 1e6)
    expected = 500 * entry["input_cost_per_token"] + 500 * entry["cache_read_input_token_cost"] + 200 * entry["output_cost_per_token"]
    assert c.cost_usd(1000, 200) == pytest.approx(expected)
    billed = litellm.cost_per_token(model="gpt-4o-mini", prompt_tokens=1000, completion_tokens=200, cache_read_input_tokens=500)
    assert c.cost_usd(1000, 200) == pytest.approx(sum(billed))
    assert "500 cached x $0.075" in c.formula(1000, 200)
    (groq,) = _clouds(tmp_path, "{models: [groq/llama-3.1-8b-instant], cached_prompt_fraction: 0.5}")
    assert groq.cost_usd(1000, 0) == pytest.approx(1000 * 0.05 / 1e6)  # no cached price: every prompt token at full price


def test_per_request_and_web_search_fees(tmp_path, model_cost):
    (sonar,) = _clouds(tmp_path, "{models: [perplexity/sonar-small-online]}")
    fee = model_cost["perplexity/sonar-small-online"]["input_cost_per_request"]
    assert sonar.usd_per_request == fee and sonar.cost_usd(0, 0) == pytest.approx(fee)
    assert sonar.formula(10, 10).endswith(f"+ ${fee:g} per request")
    (mini,) = _clouds(tmp_path, "{models: [gpt-4o-mini], web_search: low}")
    assert mini.usd_per_request == model_cost["gpt-4o-mini"]["search_context_cost_per_query"]["search_context_size_low"]


def test_recommendation_names_the_map_and_the_formula(tmp_path):
    clouds = _clouds(tmp_path, "{models: [gpt-4o-mini, groq/llama-3.1-8b-instant]}")
    rec = recommend(ladder_report([(100, 800, 50, 300, 30)]), Budget(min_decode_tps=500), Costs(), clouds)
    assert rec.answer == "cloud" and rec.cloud_pick == "groq-llama-3.1-8b-instant"
    assert rec.cloud_rows[0].price_source.startswith("LiteLLM ")
    md = markdown(rec)
    assert "USD per response =" in md and "(512 prompt x $0.15 + 128 output x $0.6) / 1M" in md
    assert "- Prices: LiteLLM " in md and "- Prices: catalogue: Groq price list" in md


def test_demo_recipe_cloud_options_as_the_readme_says(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    clouds = _providers(recipe)
    cheapest = pick_cloud(recipe, clouds, 512, 128)
    assert (cheapest.id, cheapest.provider, cheapest.model) == ("groq-llama-3.1-8b-instant", "Groq", "llama-3.1-8b-instant")
    assert cheapest.cost_usd(512, 128) * 1000 == pytest.approx(0.0358, abs=5e-5)  # README: $0.0358 per 1,000 responses
    assert pick_cloud(recipe.model_copy(update={"cluster": recipe.cluster.model_copy(update={"cloud": "gpt-4o-mini"})}),
                      clouds, 512, 128).litellm_model == "gpt-4o-mini"
    rec = recommend(ladder_report([(100, 800, 50, 300, 30)]), Budget(max_ttft_ms=1000), Costs(), clouds)
    config = yaml.safe_load(deploy_files(recipe, [ladder_report([(100, 800, 50, 300, 30)])], [rec], cheapest, tmp_path)["router"]
                            .read_text())
    assert config["model_list"][-1]["litellm_params"] == {"model": "groq/llama-3.1-8b-instant", "api_key": "os.environ/GROQ_API_KEY"}


def test_legacy_catalogue_still_loads_and_refuses_named_models(tmp_path):
    legacy = "providers:\n  - {id: c, provider: P, model: m, usd_per_1m_input: 1, usd_per_1m_output: 2, ttft_ms: 10, tokens_per_s: 5}\n"
    (c,) = _clouds(tmp_path, "{enabled: true}", legacy)
    assert (c.id, c.price_source, c.cost_usd(1e6, 0)) == ("c", "catalogue", 1.0)
    with pytest.raises(UserError, match="cloud.models: .* prices models by hand"):
        _clouds(tmp_path, "{models: [gpt-4]}", legacy)


def test_paper_table_one_from_the_papers_inputs():
    rows = {row.model: row for row in table_one()}
    edge, gpt4 = rows["Qwen2.5-7B"], rows["gpt-4"]
    assert round(edge.computed_cents, 4) == 0.0041 and edge.matches  # 590 J at 25 c/kWh, options.edge_cost_per_1k
    assert round(gpt4.computed_cents, 4) == 1.65 and gpt4.matches  # 150 + 200 tokens at GPT-4's price in LiteLLM's map
    assert gpt4.source.startswith("LiteLLM ") and gpt4.formula == "(150 prompt x $30 + 200 output x $60) / 1M"
