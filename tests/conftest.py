import os

os.environ.setdefault("HWNAS_PROGRESS", "0")

import pytest


@pytest.fixture(autouse=True)
def _own_user_table_directory(tmp_path_factory, monkeypatch):
    """Every test gets an empty user table directory (hwnas.latency.lookup) and no $HWNAS_TABLES: a test
    never reads or writes the tables of the person running it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))
    monkeypatch.delenv("HWNAS_TABLES", raising=False)


@pytest.fixture(scope="session")
def _quick_table_root(tmp_path_factory):
    """One quick ONNX Runtime table of the small proxyless network (width 0.25, 10 classes) for the session."""
    import hwnas

    root = tmp_path_factory.mktemp("quick-tables")
    hwnas.profile("proxyless", config={"width_mult": 0.25, "num_classes": 10}, out=root, warmup=1, iterations=3,
                  rounds=1)
    return root


@pytest.fixture
def quick_tables(_quick_table_root, tmp_path, monkeypatch):
    """A copy of the quick table directory as $HWNAS_TABLES, the test in its own working directory."""
    import shutil

    root = tmp_path / "tables"
    shutil.copytree(_quick_table_root, root)
    monkeypatch.setenv("HWNAS_TABLES", str(root))
    monkeypatch.chdir(tmp_path)
    return root
