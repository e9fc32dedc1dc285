"""Atomic writes of files and folders, with the modes of ordinary files and folders.

Every writer in splatlab goes through this module, so that a reader (or an interrupted run) never sees a
half-written file, and what is written is as readable as a file made with ``open()``: ``0666`` / ``0777``
less the process umask (``0644`` / ``0755`` under the usual ``022``). ``tempfile`` makes private ``0600`` /
``0700`` entries, so the modes are set explicitly before the rename.

- :func:`write_bytes`, :func:`write_text`, :func:`write_json`: a whole file at once;
- :func:`open_atomic`: a file object for writers that stream (``torch.save``, PLY, images);
- :func:`replace_dir`: a folder assembled in a temporary sibling, renamed into place (an existing folder at
  the path is replaced only once the new one is complete).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["file_mode", "dir_mode", "open_atomic", "replace_dir", "write_bytes", "write_json", "write_text"]


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir()`` gives a new folder: ``0o777`` less the umask."""
    return 0o777 & ~_umask()


def _parent(path: Path) -> Path:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: cannot write, folder {path.parent} does not exist")
    return path.parent


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """A file object on a temporary file beside ``path``, renamed over ``path`` when the block ends cleanly.

    Args:
        path: The file to write; its folder must exist.
        mode: ``"wb"`` or ``"w"`` (text, UTF-8 unless ``encoding`` is given).
        encoding: Text encoding for ``mode="w"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=_parent(path), prefix=f".{path.name}.", suffix=".tmp")
    try:
        kwargs = {"encoding": encoding or "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with open_atomic(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    with open_atomic(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, default=None) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; it becomes ``path`` when the block ends cleanly.

    An existing folder at ``path`` is moved aside, the new one renamed into place, then the old one
    removed; on an error the temporary folder is removed and ``path`` is left as it was. The parent is
    created if needed. Folders made inside keep ``mkdir``'s ordinary modes; the top one is set to
    :func:`dir_mode` (``tempfile`` makes it ``0700``).

    Args:
        path: The folder to create or replace.
        keep_existing: If a non-empty folder is at ``path`` when the block ends (another process made the
            same thing meanwhile), keep it and discard this one instead of replacing it.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, dir_mode())
        if keep_existing and out.is_dir() and any(out.iterdir()):
            return
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
