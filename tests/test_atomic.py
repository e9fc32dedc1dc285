"""Atomic writes: whole or nothing, with the modes of ordinary files and folders; the only such helper."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from splatlab.atomic import dir_mode, file_mode, open_atomic, replace_dir, write_bytes, write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_ordinary_modes_and_replace_whole(tmp_path, umask_022):
    p = write_text(tmp_path / "a.txt", "one")
    assert p.read_text() == "one" and _mode(p) == 0o644 == file_mode()
    write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    write_json(tmp_path / "b.json", {"x": [1, 2]})
    assert (tmp_path / "b.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    os.umask(0o077)  # a private umask is respected, not overridden
    assert _mode(write_text(tmp_path / "c.txt", "x")) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    p = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with open_atomic(p, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_text(tmp_path / "missing" / "a.txt", "x")
    with pytest.raises(ValueError, match="mode"):
        with open_atomic(p, "a"):
            pass


def test_replace_dir_swaps_a_complete_folder_in(tmp_path, umask_022):
    out = tmp_path / "reports" / "demo"  # the parent is created
    with replace_dir(out) as d:
        (d / "README.md").write_text("first")
        (d / "sub").mkdir()
    assert (out / "README.md").read_text() == "first" and _mode(out) == 0o755 == dir_mode()
    assert _mode(out / "sub") == 0o755
    with pytest.raises(RuntimeError):
        with replace_dir(out) as d:
            (d / "README.md").write_text("broken")
            raise RuntimeError("interrupted")
    assert (out / "README.md").read_text() == "first"  # the old folder is untouched
    with replace_dir(out) as d:
        (d / "other.md").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["other.md"]  # replaced, not merged
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # no temporary folders left
    with replace_dir(out, keep_existing=True) as d:  # another process finished the same folder first
        (d / "late.md").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["other.md"]  # theirs is kept, this copy discarded
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]
    with pytest.raises(ValueError, match="not a folder"):
        with replace_dir(write_text(tmp_path / "file", "x")):
            pass


def test_no_other_module_makes_temporary_files():
    """One helper for atomic writes: no mkstemp/mkdtemp/os.replace elsewhere in the package."""
    root = Path(__file__).resolve().parents[1] / "splatlab"
    pattern = re.compile(r"\b(mkstemp|mkdtemp|NamedTemporaryFile|os\.replace|os\.rename)\(")
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "atomic.py" and pattern.search(p.read_text())
    ]
    assert offenders == []
