"""Atomic file writes: a reader never sees a partial file, and the result has the permissions a plain `open` gives."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "file_mode"]


def file_mode() -> int:
    """Permissions of a new regular file under the current umask (temporary files are created 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path next to `path`; once the block has written it, move it onto `path`.

    The temporary file keeps `suffix` (default: the target's), so writers that pick a format from the extension
    (PIL) see the right one. If the block raises, the target is left as it was and the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix if suffix is None else suffix
    )
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, file_mode())
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
