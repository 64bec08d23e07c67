"""Atomic writes: all or nothing, with the permissions of a plain new file."""

from __future__ import annotations

import os

import pytest

from pipeline_teasr.files import atomic_write


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as temporary:
        with open(temporary, "w") as stream:
            stream.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_finished_write_replaces_the_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "image.png"
    previous = os.umask(0o027)
    try:
        with atomic_write(target) as temporary:
            assert temporary.endswith(".png") and os.path.dirname(temporary) == str(target.parent)
            with open(temporary, "w") as stream:
                stream.write("new")
    finally:
        os.umask(previous)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["image.png"]
