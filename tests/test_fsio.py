import os
import stat

import pytest

from hwnas.fsio import atomic_write_text


def test_atomic_write_keeps_normal_file_modes_and_replaces(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "sub" / "t.csv"
        atomic_write_text(path, "a\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # what open(path, "w") makes, not mkstemp's 0600
        atomic_write_text(path, "b\r\n")
        assert path.read_bytes() == b"b\r\n"  # newlines as given
        assert sorted(p.name for p in path.parent.iterdir()) == ["t.csv"]  # no temp file left
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    atomic_write_text(path, "old")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
