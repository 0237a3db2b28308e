from __future__ import annotations

import pytest

from toolkit.errors import UserError
from toolkit.io import atomic_path, ensure_dir, write_json
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
