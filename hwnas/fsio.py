"""Files that are never half-written: one atomic text write used by tables, runs and reports."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_torch_save", "atomic_write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to a temp file next to ``path``, fsync it, and
    ``os.replace`` it over ``path``; then fsync the directory where the platform allows it. The file
    gets the permissions a plain ``open(path, "w")`` would (``mkstemp`` alone makes it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` into a temp file next to ``path``, then ``os.replace`` it over ``path`` (checkpoints,
    inherited and trained weights)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
