"""SIGKILL `toolkit run` in compress, evaluate and profile while a child is busy, then rerun: nothing is lost.

After every kill no child outlives the run; every rerun sweeps what the killed one left and redoes only
the job that was cut off; the last rerun completes with a recommendation and a manifest whose hashes match.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import write_recipe
from toolkit.formats.files import path_sha256
from toolkit.records import Manifest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")


def _count(ws: Path, pattern: str) -> int:
    return sum(1 for p in ws.glob(pattern) if not p.name.startswith("roofline-"))


@dataclass(frozen=True)
class Kill:
    stage: str
    child: str  # a word of the busy child's command line
    ready: Callable[[Path], bool]  # the workspace state the kill waits for
    min_age_s: float  # how long the child has run


KILLS = [
    Kill("compress", "convert_hf_to_gguf.py", lambda ws: True, 1.0),  # converting HF -> F16
    Kill("compress", "toolkit.formats.gguf_quantize", lambda ws: _count(ws, "variants/*/variant.json") == 2, 0.0),
    Kill("evaluate", "toolkit.profiling.worker", lambda ws: _count(ws, "quality/*.json") == 1, 0.3),
    Kill("profile", "toolkit.profiling.worker", lambda ws: _count(ws, "profiles/*.json") == 1, 0.3),
]
PR_SET_CHILD_SUBREAPER = 36
RESULTS = ["intermediate/*.gguf", "variants/*-gguf-q*/model.gguf", "quality/*.json", "profiles/*-*.json"]  # one per job


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Orphans of the runs come to this process (not init), so that it can read how each one ended."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 0)


def _ended(proc: psutil.Process) -> str | None:
    """None while `proc` runs, "" when it died of SIGKILL, else how it ended. Reaps it: we are its subreaper."""
    try:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:  # a grandchild whose own parent lives: it is not ours to wait for
        return None if _running(proc) else ""
    if not pid:
        return None
    return "" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else f"exit status {status}"


def _orphans(procs: list[psutil.Process], within_s: float = 3.0) -> list[str]:
    """Children of a killed run that outlived it: still running after `within_s`, or ended any other way than
    by SIGKILL at their parent's death (a tiny job may well finish its work within seconds)."""
    outlived, pending, deadline = [], list(procs), time.monotonic() + within_s
    while pending and time.monotonic() < deadline:
        for proc in list(pending):
            if (how := _ended(proc)) is not None:
                pending.remove(proc)
                outlived += [f"{proc.pid} ended by itself ({how})"] if how else []
        time.sleep(0.02)
    for proc in pending:  # ours to clean up, after counting them
        outlived.append(f"{proc.pid} still running: {_cmdline(proc)[-80:]}")
        with contextlib.suppress(psutil.Error):
            proc.kill()
            proc.wait(5)
    return outlived


def _kill_when(run: subprocess.Popen, ws: Path, kill: Kill) -> list[psutil.Process]:
    """SIGKILL the run once the workspace is `ready` and the child is busy; return its live descendants."""
    parent, deadline = psutil.Process(run.pid), time.monotonic() + 300
    while time.monotonic() < deadline:
        assert run.poll() is None, f"the run ended (rc {run.returncode}) before the {kill.stage} kill point"
        if kill.ready(ws):  # first: a child seen after this is the next job's, not the last one's
            try:
                family = parent.children(recursive=True)
            except psutil.Error:
                family = []
            if any(kill.child in _cmdline(p) and time.time() - p.create_time() >= kill.min_age_s for p in family):
                family = [p for p in family if _running(p)]
                run.send_signal(signal.SIGKILL)
                run.wait()
                return family
        time.sleep(0.02)
    raise AssertionError(f"no busy {kill.child} within 300 s")


def _finished(ws: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every artifact a stage keeps and reuses; a rewrite (atomic rename) changes both."""
    keep = [*ws.glob("intermediate/*.gguf"), *ws.glob("variants/*/variant.json"), *ws.glob("quality/*.json"),
            *ws.glob("profiles/*.json")]
    keep += [p for p in ws.glob("variants/*/model.gguf") if (p.parent / "variant.json").exists()]
    if any(ws.glob("quality/*.json")):  # the reference is scored first, so its logits are complete
        keep += list(ws.glob("fidelity/*/*.npy"))
    return {str(p.relative_to(ws)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in keep}


def _logs(ws: Path) -> dict[str, int]:
    """Every child job opens its log for writing when it starts: a changed log is a job run."""
    return {p.name: p.stat().st_mtime_ns for p in ws.glob("logs/*.log")}


def _results(ws: Path) -> set[Path]:
    """What child jobs produce, one file per job (the F16 variant is a copy and the roofline no child's)."""
    return {p for pattern in RESULTS for p in ws.glob(pattern) if not p.name.startswith("roofline-")}


def _temporaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*.part")]


def test_kill_anywhere_lose_nothing(tiny_llama, tmp_path):
    from toolkit.formats.llamacpp_vendor import converter_dir
    from toolkit.io import cache_root
    from toolkit.quality.corpus import corpus_path

    ws, cache, tmp, reports = (tmp_path / name for name in ("ws", "cache", "tmp", "reports"))
    corpus = corpus_path("flores-eng")  # fetched once into the user's cache; the runs get a copy in theirs
    (cache / corpus.relative_to(cache_root())).parent.mkdir(parents=True)
    shutil.copy(corpus, cache / corpus.relative_to(cache_root()))
    tmp.mkdir()
    env = dict(os.environ, EDGEFIRST_CACHE=str(cache), TMPDIR=str(tmp), EDGEFIRST_LLAMA_CPP_DIR=str(converter_dir()),
               HF_HUB_OFFLINE="1", COLUMNS="200")
    recipe = write_recipe(tmp_path / "tiny.yaml", f"""
        name: tiny
        workspace: {ws}
        reports_dir: {reports}
        candidates:
          - model: {tiny_llama}
            name: tiny-llama
        variants:
          gguf:
            quants: [F16, Q8_0, Q4_K_M]
        device: {{threads: 2, prompt_lengths: [16, 64], decode_tokens: 16, warmup: 1, repeats: 3, timeout_s: 300,
                  rounds: 1, max_rounds: 1, certify_runs: 0}}
        quality: {{ctx: 64, chunks: 2}}
        cloud: {{enabled: false}}
        """)

    def run(kill: Kill | None) -> tuple[int, str, dict[str, tuple[int, int]], int]:
        """One `toolkit run`, killed at `kill` or left to finish; returns its exit status, output, the finished
        artifacts and how many jobs it ran beyond those whose results it kept (the one cut off, if killed)."""
        finished, logs, results, out = _finished(ws), _logs(ws), _results(ws), tmp_path / "out.txt"
        with open(out, "w") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "run", str(recipe)], env=env, stdout=handle,
                                    stderr=subprocess.STDOUT)
        try:
            if kill:
                with _subreaper():
                    family = _kill_when(proc, ws, kill)
                    orphans = _orphans(family)
                assert family, "no child was running at the kill"
                assert not orphans, f"children outlived the killed run: {orphans}"
            else:
                proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        after = _finished(ws)
        redone = [k for k, v in finished.items() if after.get(k) != v]
        assert not redone, f"finished work was redone: {redone}"
        jobs = sum(1 for name, mtime in _logs(ws).items() if logs.get(name) != mtime)
        kept = len(_results(ws) - results)
        return proc.returncode, out.read_text(), after, jobs - kept

    left: list[list[Path]] = []  # temporaries each kill left behind
    lost: list[int] = []  # jobs each run started whose result it did not keep
    for kill in KILLS:
        rc, _, _, jobs = run(kill)
        lost.append(jobs)
        assert rc == -signal.SIGKILL
        kept = [p for p in (left[-1] if left else []) if p.exists()]
        assert not kept, f"this run did not sweep what the last killed one left: {kept}"
        left.append(_temporaries(ws, tmp, cache))
    assert all(left), "every kill should leave a temporary (a write or a job folder) for the sweep to find"
    rc, output, finished, jobs = run(None)
    lost.append(jobs)

    assert rc == 0, output[-3000:]
    assert "recommendation-" in output and list(reports.glob("recommendation-*.json"))
    manifest = Manifest.load(ws / "manifest.json")
    assert [v.quant for v in manifest.variants] == ["F16", "Q8_0", "Q4_K_M"]
    for v in manifest.variants:
        assert path_sha256(Path(v.path)) == v.sha256, v.label
    for stage in ("quality", "profiles"):  # every variant scored and measured
        assert all(any(k.startswith(f"{stage}/{v.id}-") for k in finished) for v in manifest.variants), stage
    assert _temporaries(ws, tmp, cache, reports) == []
    # Each kill lost exactly the jobs it cut off: one, or at the evaluate kill the two that run at once on two
    # threads (pipeline/local.py); no run rebuilt or re-measured anything finished.
    at_once = [2 if kill.stage == "evaluate" else 1 for kill in KILLS]
    assert all(1 <= n <= most for n, most in zip(lost, at_once, strict=False)) and lost[-1] == 0, lost
    print(f"\njobs lost per run {lost}; finished results {len(_results(ws))}, none redone; "
          f"temporaries left by each kill {[len(v) for v in left]}, after the last run 0; orphans 0")


@pytest.mark.parametrize("thread", ["main", "worker"])
def test_a_child_dies_with_its_parent(thread):
    """The parent-death signal alone, without the pipeline: SIGKILL a parent, its sleeping child goes too, also
    when a worker thread that waits for it started it (compress's and evaluation's thread pools)."""
    start = ("c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
             "preexec_fn=die_with_parent(waited=True)); print(c.pid, flush=True); c.wait()")
    body = (f"t = threading.Thread(target=lambda: exec({start!r})); t.start(); t.join()" if thread == "worker"
            else start.replace("c.wait()", "time.sleep(60)"))
    script = f"import subprocess, sys, threading, time; from toolkit.procs import die_with_parent; {body}"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    with _subreaper():
        parent.kill()
        parent.wait()
        assert _orphans([child]) == []
