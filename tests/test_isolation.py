"""The suite's own rules (tests/conftest.py): no network, a test cache that is not the user's, the hub offline,
and in CI a skip for want of a required dependency is a failure (tests/ci_required.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.ci_required import required_by
from toolkit.io import cache_root

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_a_unit_test_cannot_reach_the_network():
    import socket
    import urllib.request

    with pytest.raises(RuntimeError, match="socket"):
        socket.create_connection(("pypi.org", 443), timeout=5)
    with pytest.raises(RuntimeError, match="socket"):
        urllib.request.urlopen("https://pypi.org/simple/", timeout=5)
    assert os.environ.get("PIP_NO_INDEX") == "1"  # and fetch_pypi_files' pip has no index


def test_the_cache_is_the_test_cache_not_the_users(test_cache):
    assert cache_root() == test_cache and Path(os.environ["EDGEFIRST_CACHE"]) == test_cache
    users = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgefirst-toolkit"
    assert users not in (test_cache, *test_cache.parents)


def test_the_hub_is_offline_from_import_on():
    from huggingface_hub import constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE


@pytest.mark.parametrize(("reason", "required"), [
    ("chromium is not installed (.ci/run installs Debian's chromium)", "Chromium"),
    ("could not import 'llama_cpp.server': No module named 'llama_cpp'", "the llama.cpp server"),
    ("could not import 'litellm': No module named 'litellm'", "LiteLLM"),
    ("could not import 'optimum.exporters.onnx': No module named 'optimum'", "ONNX Runtime"),
    ("could not import 'onnxruntime': No module named 'onnxruntime'", "ONNX Runtime"),
    ("gptqmodel is not installed", "GPTQModel"),
    ("no demo report", None), ("parent-death signal is Linux-only", None), ("could not import 'kaleido'", None),
])
def test_which_skips_are_required(reason, required):
    assert required_by(reason) == required


INNER = {
    "test_inner.py": """
        import pytest

        def test_browser():
            pytest.skip("chromium is not installed")

        def test_optional():
            pytest.skip("no demo report")

        def test_fine():
            pass
        """,
    "test_inner_module.py": """
        import pytest

        pytest.skip("could not import 'litellm': No module named 'litellm'", allow_module_level=True)

        def test_router():
            pass
        """,
}


def _inner_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess:
    for name, text in INNER.items():
        (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)} | ({"CI": ci} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.ci_required", "-p", "no:randomly", "-p", "no:cacheprovider",
                           "-c", str(folder / "pytest.ini"), "--rootdir", str(folder), "-rA", str(folder)],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=120)


def test_in_ci_a_required_skip_fails_the_run(tmp_path):
    done = _inner_pytest(tmp_path, "true")
    out = done.stdout
    assert done.returncode == 1, out
    assert "FAILED test_inner.py::test_browser" in out and "Chromium is required in CI (CI=true)" in out
    assert "SKIPPED" in out and "no demo report" in out  # a skip nobody requires stays a skip
    assert "required in CI but skipped" in out and "test_inner_module.py: LiteLLM is required in CI" in out
    assert "1 failed, 1 passed" in out


def test_outside_ci_the_same_skips_are_skips(tmp_path):
    done = _inner_pytest(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 3 skipped" in done.stdout and "required in CI" not in done.stdout
