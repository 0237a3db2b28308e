from __future__ import annotations

import pytest

from toolkit.errors import UserError
from toolkit.io import atomic_path, ensure_dir, sweep_stale, write_json
from toolkit.records import Manifest, Stat, Variant


def _variant(**over) -> Variant:
    base = dict(id="m-gguf-q4-1", label="m Q4", model="m", format="gguf", runtime="llama.cpp", quant="Q4_K_M",
                path="/x/model.gguf", size_bytes=10, sha256="ab" * 32, source="s", source_sha256="cd" * 32,
                seconds=1.0, tools={"llama_cpp_python": "0.3.36"})
    return Variant(**(base | over))


def test_stat_percentiles_match_numpy():
    import numpy as np

    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    s = Stat.of(values)
    assert s.median == pytest.approx(np.median(values))
    assert s.p90 == pytest.approx(np.percentile(values, 90))
    assert s.p10 == pytest.approx(np.percentile(values, 10))
    assert s.n == 6


def test_manifest_round_trip(tmp_path):
    manifest = Manifest(recipe="r", variants=[_variant()])
    write_json(tmp_path / "manifest.json", manifest)
    assert Manifest.load(tmp_path / "manifest.json") == manifest


def test_record_from_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(Manifest(recipe="r", variants=[]).model_dump_json().replace('"schema_version":1', '"schema_version":99'))
    with pytest.raises(UserError, match="schema version 99"):
        Manifest.load(path)


def test_corrupt_record_is_one_line(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="manifest.json: not a valid Manifest record"):
        Manifest.load(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole(tmp_path):
    import json

    target = tmp_path / "out.json"
    write_json(target, {"a": "x" * 10_000, "b": [1, 2, 3]})
    write_json(target, {"a": 2})  # shorter than what it replaces: nothing of the old file may remain
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 2}
    assert target.read_text(encoding="utf-8") == '{\n  "a": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_unwritable_workspace_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create folder"):
        ensure_dir(blocker / "ws")


def test_temporaries_of_dead_writers_are_swept_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getpid()
    stale = tmp_path / f".model.gguf.{dead_pid}.k2j_9x0a.part"
    stale.write_bytes(b"half")
    (tmp_path / "sub").mkdir()
    stale_dir = tmp_path / "sub" / f".onnx-int8.{dead_pid}.abcd1234.part"
    (stale_dir / "inner").mkdir(parents=True)
    live = tmp_path / f".profile.json.{live_pid}.q1w2e3r4.part"
    live.write_text("{")
    foreign = tmp_path / ".notes.part"  # not a temporary of ours: no pid in the name
    foreign.write_text("x")
    assert sweep_stale(tmp_path) == 1
    assert not stale.exists() and stale_dir.exists() and live.exists() and foreign.exists()
    assert sweep_stale(tmp_path, recursive=True) == 1
    assert not stale_dir.exists() and live.exists() and foreign.exists()
    stale.write_bytes(b"half")
    with atomic_path(tmp_path / "model.gguf") as tmp:  # every atomic write sweeps its folder first
        assert tmp.name.startswith(f".model.gguf.{live_pid}.") and tmp.name.endswith(".part")
        tmp.write_bytes(b"whole")
    assert not stale.exists() and live.exists()


def test_write_json_is_sorted_indented_and_takes_paths(tmp_path):
    from pydantic import BaseModel

    class Small(BaseModel):
        zeta: int = 1
        alpha: str = "é"

    target = tmp_path / "d.json"
    write_json(target, {"b": 1, "a": {"d": tmp_path / "x", "c": [1, 2]}})
    assert target.read_text(encoding="utf-8") == (
        '{\n  "a": {\n    "c": [\n      1,\n      2\n    ],\n    "d": "' + str(tmp_path / "x") + '"\n  },\n  "b": 1\n}\n')
    write_json(target, Small())  # a record: its own field order, indented the same way
    assert target.read_bytes() == '{\n  "zeta": 1,\n  "alpha": "é"\n}\n'.encode()


def test_the_lock_file_is_readable_by_all_and_names_its_holder(tmp_path):
    import os

    from toolkit.io import hold_lock

    old = os.umask(0)
    try:
        hold_lock(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / ".lock").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize(("content", "named"), [(b"", "pid unknown"), (b"\xff\xfe\n", "pid \ufffd\ufffd")])
def test_a_lock_held_with_an_odd_lock_file_still_gives_one_line(tmp_path, content, named):
    import subprocess
    import sys

    from toolkit.io import hold_lock

    holder = ("import sys; from pathlib import Path; from toolkit.io import hold_lock; p = Path(sys.argv[1]); hold_lock(p); "
              "(p / '.lock').write_bytes(bytes.fromhex(sys.argv[2])); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path), content.hex()], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError) as caught:
            hold_lock(tmp_path)
        assert f"another toolkit run ({named}) is using this workspace" in caught.value.one_line()
    finally:
        proc.communicate("", timeout=30)


def test_a_lock_that_cannot_be_opened_is_a_user_error(tmp_path, monkeypatch):
    import errno
    import os

    from toolkit import io as tio
    from toolkit.io import hold_lock

    (tmp_path / "a" / ".lock").mkdir(parents=True)  # a folder where the lock file should be
    with pytest.raises(UserError) as caught:
        hold_lock(tmp_path / "a")
    assert caught.value.one_line() == f"{tmp_path / 'a' / '.lock'}: cannot open the lock file (Is a directory)"

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tio.os, "pwrite", full)
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match=f"^{tmp_path / 'b' / '.lock'}: no space left on the device"):
        hold_lock(tmp_path / "b")


def test_a_temporary_whose_writer_cannot_be_inspected_is_kept(tmp_path, monkeypatch):
    import psutil

    from toolkit import io as tio

    class Denied:
        def __init__(self, pid):
            raise psutil.AccessDenied(pid)

    monkeypatch.setattr(tio.psutil, "Process", Denied)
    part = tmp_path / ".model.gguf.4242.abcd1234.part"
    part.write_bytes(b"half")
    assert sweep_stale(tmp_path) == 0 and part.exists()  # it may still be writing: leave it


def test_cache_root_follows_edgefirst_cache_then_xdg_then_home(tmp_path, monkeypatch):
    from toolkit.io import cache_root

    monkeypatch.setenv("EDGEFIRST_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.setenv("EDGEFIRST_CACHE", "")  # empty: not set
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "edgefirst-toolkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "edgefirst-toolkit"


def test_folder_errors_name_the_folder(tmp_path, monkeypatch):
    from toolkit import io as tio

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as caught:
        ensure_dir(tmp_path / "file" / "ws")
    assert caught.value.one_line() == f"{tmp_path / 'file' / 'ws'}: cannot create folder (Not a directory)"
    monkeypatch.setattr(tio.os, "access", lambda path, mode: False)  # as root every folder is writable: say it is not
    with pytest.raises(UserError) as caught:
        ensure_dir(tmp_path / "ro")
    assert caught.value.one_line() == f"{tmp_path / 'ro'}: folder is not writable"


def test_sweep_counts_every_stale_temporary_and_survives_an_unreadable_folder(tmp_path):
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    for name in ("a", "b", "c"):
        (tmp_path / f".{name}.json.{dead}.x1y2z3.part").write_text("{")
    assert sweep_stale(tmp_path) == 3 and list(tmp_path.iterdir()) == []

    class Unreadable:
        def glob(self, pattern):
            raise PermissionError(13, "Permission denied")

        rglob = glob

    assert sweep_stale(Unreadable()) == 0 and sweep_stale(Unreadable(), recursive=True) == 0
