"""lm-eval through each runtime: the GGUF adapter agrees with lm-eval's HF class on the same weights."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from tests.conftest import write_recipe  # noqa: E402
from toolkit import pipeline  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402

REQUESTS = [
    ("Edge devices run small", " language models"),
    ("Quantization trades accuracy for", " speed and size."),
    ("When no edge variant meets the budget,", " requests go to the cloud"),
    ("The toolkit measures time to first", " token"),
    ("The toolkit measures time to first", " memory"),
]


def _instances(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


@pytest.fixture(scope="module")
def f32_gguf(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agree")
    recipe = load_recipe(write_recipe(tmp / "r.yaml", f"""
        name: agree
        workspace: {tmp / 'ws'}
        candidates: [{{model: {tiny_llama}, name: tiny-llama}}]
        variants: {{gguf: {{quants: [F32, Q4_K_M]}}}}
        """))
    return pipeline.compress(recipe).variants


def test_gguf_and_hf_loglikelihoods_agree_on_the_same_weights(tiny_llama, f32_gguf):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.evaluation.lm_adapter import SessionLM
    from toolkit.runtimes.llamacpp import open_session

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    hf = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny_llama), batch_size=2, device="cpu")
    gguf = SessionLM(open_session(f32_gguf[0].path, 2, 256, 256), 256)
    ours = gguf.loglikelihood(_instances(REQUESTS))
    theirs = hf.loglikelihood(_instances(REQUESTS))
    for (a, _), (b, _) in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=2e-3, rel=1e-3)
    # the 4-bit file runs through the same adapter and lands near, not on, the full-precision figures
    q4 = SessionLM(open_session(f32_gguf[1].path, 2, 256, 256), 256).loglikelihood(_instances(REQUESTS))
    assert any(abs(a - b) > 1e-3 for (a, _), (b, _) in zip(q4, ours, strict=True))


def test_rolling_and_generation_through_the_gguf_adapter(f32_gguf):
    from toolkit.evaluation.lm_adapter import SessionLM
    from toolkit.runtimes.llamacpp import open_session

    lm = SessionLM(open_session(f32_gguf[0].path, 2, 128, 128), 128)
    text = "Edge devices run small language models close to the data. " * 8
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert rolling[0] < 0
    gen = lm.generate_until([Instance("generate_until", {}, ("Edge devices", {"until": ["."], "max_gen_toks": 12}), 0)])
    assert isinstance(gen[0], str) and "." not in gen[0]


def test_unknown_task_stops_the_run_before_any_work_with_a_clear_error(tmp_path, monkeypatch, capsys):
    from tests.conftest import run_console, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", f"name: t\nworkspace: {tmp_path / 'ws'}\n"
                          "candidates: [{model: smollm2-135m-instruct}]\naccuracy: {tasks: [mmlu_offline, no_such_task]}\n")
    assert run_console(monkeypatch, "run", str(recipe)) == 2
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert lines == [f"error: {recipe}: accuracy.tasks: unknown task 'no_such_task': not an offline task "
                     "(mmlu_offline, social_iqa_bb, strategyqa_bb, winowhy_bb, gsm8k_offline) nor an lm-eval task"], lines
    assert not (tmp_path / "ws" / "manifest.json").exists()  # nothing was compressed


def test_a_stock_task_whose_data_cannot_be_had_stops_the_run_before_any_work(tmp_path, monkeypatch, capsys):
    import datasets
    from huggingface_hub import constants

    from tests.conftest import run_console, write_recipe

    # the hub is off in the tests (conftest.py) and both caches are empty folders: hellaswag's data cannot be had
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    recipe = write_recipe(tmp_path / "r.yaml", f"name: t\nworkspace: {tmp_path / 'ws'}\n"
                          "candidates: [{model: smollm2-135m-instruct}]\naccuracy: {tasks: [hellaswag]}\n")
    assert run_console(monkeypatch, "run", str(recipe)) == 2
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {recipe}: accuracy.tasks: hellaswag: its data set "
                                                   "'Rowan/hellaswag' cannot be loaded ("), lines
    assert lines[0].endswith("use an offline task (toolkit tasks) or give this machine the hub"), lines
    assert not (tmp_path / "ws" / "manifest.json").exists()  # nothing was compressed


def test_a_job_with_lm_evals_own_tasks_indexes_only_their_folders(tmp_path):
    """lm-eval's whole task index (every YAML it ships) takes 9-17 s per job on 2 cores: a job gets the folders
    that hold its stock tasks and all they name (a group's tasks across subfolders, a tag's members), where an
    index of them alone resolves every such name as the whole index does; elsewhere the whole index."""
    from pathlib import Path

    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    from tests.test_io_records import _variant
    from toolkit.pipeline import accuracy
    from toolkit.profiling.harness import ChildResult

    stock = Path(lm_eval.tasks.__file__).parent
    full = accuracy._stock_index().task_index
    assert accuracy.stock_folders(("hellaswag",)) == [str(stock / "hellaswag")]
    [root] = accuracy.stock_folders(("leaderboard",))  # a group of groups, in subfolders of its own
    small = TaskManager(include_path=[root], include_defaults=False).task_index
    named = [n for n in small if n.startswith("leaderboard")]
    assert len(named) > 20 and all(small[n] == full[n] for n in named) and len(small) < len(full) / 50
    assert accuracy.stock_folders(("acp_bench",)) is None  # its tag is spread over folders that repeat names

    jobs = []

    class Capture:
        def run(self, job, timeout_s, memory_cap_mb, log):
            jobs.append(job)
            return ChildResult(status="crash", data={}, reason="captured", wall_s=0.0)

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", f"name: t\nworkspace: {tmp_path / 'ws'}\n"
                                      "candidates: [{model: m.gguf}]\naccuracy: {tasks: [mmlu_offline]}\n"))
    offline = accuracy.task_dir("mmlu_offline")
    for folders in ({"mmlu_offline": offline, "hellaswag": None}, {"acp_bench": None}):
        paths = {task: ("k", tmp_path / f"{task}.json") for task in folders}
        results = accuracy._eval_tasks(recipe, _variant(), folders, paths, Capture())
        assert {r.reason for r in results.values()} == {"captured"}
    assert (jobs[0].task_dirs, jobs[0].stock_tasks, jobs[0].all_stock) == ([offline, str(stock / "hellaswag")], True, False)
    assert (jobs[1].task_dirs, jobs[1].stock_tasks, jobs[1].all_stock) == ([], True, True)
