import os

os.environ.setdefault("HWNAS_PROGRESS", "0")

import pytest


@pytest.fixture(autouse=True)
def _own_user_table_directory(tmp_path_factory, monkeypatch):
    """Every test gets an empty user table directory (hwnas.latency.lookup) and no $HWNAS_TABLES: a test
    never reads or writes the tables of the person running it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))
    monkeypatch.delenv("HWNAS_TABLES", raising=False)
