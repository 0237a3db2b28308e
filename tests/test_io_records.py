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
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}")
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
