"""raylg.files: digests equal hashlib's, atomic writes land whole or leave the old file and no temporary."""

import hashlib
from pathlib import Path

import pytest

from raylg import storage
from raylg.files import atomic_path, file_digest, sha256_file, write_bytes_atomic, write_text_atomic


def test_digests_equal_hashlib_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 1000  # 256,000 bytes: several chunks of 4096
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "md5", chunk=4096) == hashlib.md5(data).hexdigest()


def test_atomic_writes_replace_whole_and_create_the_parent(tmp_path):
    dest = tmp_path / "a" / "b" / "config.yaml"
    write_text_atomic(dest, "one")
    write_text_atomic(dest, "two")
    write_bytes_atomic(tmp_path / "a" / "w.bin", b"\x00\x01")
    assert dest.read_text() == "two" and (tmp_path / "a" / "w.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["config.yaml"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    dest = tmp_path / "eval.png"
    dest.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(dest, ".tmp.png") as tmp:
            assert tmp.name == "eval.png.tmp.png"
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["eval.png"]


def test_storage_write_bytes_is_atomic_under_a_hidden_name(tmp_path, monkeypatch):
    import raylg.files

    renamed = []
    real = raylg.files.os.replace
    monkeypatch.setattr(raylg.files.os, "replace", lambda src, dst: (renamed.append((Path(src), Path(dst))), real(src, dst)))
    uri = str(tmp_path / "m" / "manifest.json")
    storage.write_bytes(uri, b"{}")
    (src, dst), = renamed  # written under another name, then renamed onto the destination
    assert src.parent == dst.parent and src.name.startswith(".manifest.json.tmp-") and dst.name == "manifest.json"
    assert storage.list_names(str(tmp_path / "m")) == ["manifest.json"]
    assert (tmp_path / "m" / "manifest.json").read_bytes() == b"{}"
