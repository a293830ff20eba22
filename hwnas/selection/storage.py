"""The shared Optuna storage that parallel multi-trial workers coordinate through (Akiba et al., "Optuna",
KDD 2019; ``optuna.storages``).

``journal:PATH`` is Optuna's ``JournalStorage`` on a ``JournalFileBackend``: an append-only log of
operations on one file, no server, any number of processes on any machines that mount the file (the
lock is ``JournalFileOpenLock``, an ``O_EXCL`` lock file, which works on NFS where symlink locks may not).
``postgresql://...`` and ``mysql://...`` are Optuna's ``RDBStorage`` (SQLAlchemy; the driver, e.g.
psycopg2, installed by the user). ``sqlite:`` is refused: SQLite serializes writers with a file lock and
Optuna's own documentation warns against it for parallel workers ("database is locked").
"""
from __future__ import annotations

import re
from pathlib import Path

SCHEMES = "journal:PATH (a file on a shared filesystem) or postgresql://USER:PASS@HOST/DB"


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str):
    """The Optuna storage behind ``url`` (see the module docstring); a one-line ValueError naming the
    problem when it is malformed, refused or cannot be reached."""
    try:
        import optuna
    except ImportError:
        raise ValueError("--storage needs Optuna: pip install optuna") from None
    if not isinstance(url, str) or not url:
        raise ValueError(f"--storage: empty; use {SCHEMES}")
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not str(path) or str(path) == ".":
            raise ValueError(f"--storage {url}: no file; use {SCHEMES}")
        if not path.parent.is_dir():
            raise ValueError(f"--storage {url}: directory {path.parent} does not exist (the journal's folder "
                             f"must be on a filesystem every worker mounts)")
        if path.is_dir():
            raise ValueError(f"--storage {url}: {path} is a directory, not a journal file")
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        try:
            backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
            return optuna.storages.JournalStorage(backend)
        except (OSError, ValueError) as e:
            raise ValueError(f"--storage {url}: cannot open the journal ({str(e).splitlines()[0]})") from None
    if url.startswith("sqlite:"):
        raise ValueError(f"--storage {url}: SQLite locks out parallel writers; use {SCHEMES}")
    if re.match(r"^(postgresql|mysql)(\+\w+)?://", url):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ImportError as e:
            raise ValueError(f"--storage {redact(url)}: a driver is missing ({e}); e.g. pip install psycopg2-binary") from None
        except Exception as e:  # sqlalchemy.exc.OperationalError and the like: a server that cannot be reached
            reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise ValueError(f"--storage {redact(url)}: cannot reach the database ({reason})") from None
    raise ValueError(f"--storage {redact(url)}: unknown kind of storage; use {SCHEMES}")
