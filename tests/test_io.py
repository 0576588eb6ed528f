"""Atomic writes: all or nothing, readable like ordinary files."""

import os
import stat

import pytest

from clap_edge.core.io import atomic_directory, atomic_path, atomic_write_text


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert target.read_text() == "old"


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "bundle"
    with atomic_directory(target) as d:
        (d / "f").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_directory(target):
            pass
    with pytest.raises(ValueError):
        with atomic_directory(target, overwrite=True) as d:
            (d / "f").write_text("2")
            raise ValueError
    assert (target / "f").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_outputs_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "x.json", "{}")
        with atomic_directory(tmp_path / "d") as d:
            (d / "f").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_writer_that_recreates_the_temp_file_still_gets_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.bin") as tmp:
            tmp.unlink()  # as libraries that write their own temp file and rename it do
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o644


def test_atomic_directory_overwrites_past_a_stale_old_directory(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "a").write_text("1")
    stale = tmp_path / ".bundle.old"  # what a crash between the two renames of an earlier overwrite leaves
    stale.mkdir()
    (stale / "x").write_text("stale")
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "2"
    assert not stale.exists()
