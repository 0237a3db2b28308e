"""In CI (`CI=true`), a test that skips because a required dependency is missing is a failure.

`.ci/run` installs Chromium, the llama.cpp server, LiteLLM, ONNX Runtime (with optimum's exporter), Ray and
GPTQModel; a test that skips for want of one of them there means the install broke, and the run must not go
green. Outside CI the same skips stay skips (a developer may lack Chromium). Loaded by tests/conftest.py;
a plugin of its own so that a test can run it in an inner pytest session (tests/test_isolation.py).
"""

from __future__ import annotations

import os
import re

import pytest

# What CI installs, and the words a skip for want of it says (importorskip: "could not import 'litellm'").
REQUIRED: dict[str, re.Pattern[str]] = {
    "Chromium": re.compile(r"chromium", re.IGNORECASE),
    "the llama.cpp server": re.compile(r"llama_cpp|llama\.cpp", re.IGNORECASE),
    "LiteLLM": re.compile(r"litellm", re.IGNORECASE),
    "ONNX Runtime": re.compile(r"onnxruntime|optimum", re.IGNORECASE),
    "GPTQModel": re.compile(r"gptqmodel", re.IGNORECASE),
    "Ray": re.compile(r"could not import 'ray'", re.IGNORECASE),
}
_SKIPPED_AT_COLLECTION: list[str] = []  # "nodeid: why" for each module that skipped at collection


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def required_by(reason: str) -> str | None:
    """The required dependency a skip reason names, or None."""
    return next((name for name, words in REQUIRED.items() if words.search(reason)), None)


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_configure(config: pytest.Config) -> None:
    _SKIPPED_AT_COLLECTION.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        reason = _reason(report)
        if (what := required_by(reason)) is not None:
            report.outcome = "failed"
            report.longrepr = f"{what} is required in CI (CI=true), but this test skipped: {reason}"
    return report


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A whole module skipped (module-level importorskip): remembered, and the session fails at the end."""
    if report.skipped and in_ci() and (what := required_by(_reason(report))) is not None:
        _SKIPPED_AT_COLLECTION.append(f"{report.nodeid}: {what} is required in CI, but: {_reason(report)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED_AT_COLLECTION and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = _SKIPPED_AT_COLLECTION
    if lines:
        terminalreporter.section("required in CI but skipped (CI=true): FAILED", red=True)
        for line in lines:
            terminalreporter.line(line, red=True)
