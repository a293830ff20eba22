"""Parallel multi-trial search on a shared Optuna storage (``hwnas.selection.workers``): the claim rules on a
journal file, the heartbeat's failure and retry, two worker processes on one study (no architecture twice,
both workers' ids in the merged view), a worker killed with SIGKILL mid-trial and the study completed by
``hwnas worker``, and the one-line refusals of bad storages.

Tabular evaluation is instant, so a first worker would finish a small study before a second one has imported
torch; the process tests make every evaluation sleep (``HWNAS_TEST_EVAL_SLEEP``, a ``sitecustomize`` on the
children's ``PYTHONPATH``) so that the workers overlap as real evaluations make them. On a loaded machine the
second worker can still start after the first has finished the study, so the tests that need every worker to take
part also hold each worker's first evaluation until all of them have arrived (``HWNAS_TEST_EVAL_BARRIER``)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hwnas.selection.storage import open_storage, redact
from hwnas.selection.workers import _clash, _retry, completed, create_study, fail_stale, worker_seed
from tests.test_cli import assert_one_line_error, run
from tests.test_tabular import write_benchmark

optuna.logging.set_verbosity(optuna.logging.WARNING)
TAB = ["--space", "nb201", "--evaluator", "tabular", "--benchmark", "bench.csv", "--metric", "val_acc",
       "--latency-column", "lat_ms", "--latency-target", "40%"]

SLOW = '''
import os, time
if os.environ.get("HWNAS_TEST_EVAL_SLEEP"):
    from hwnas.selection import tabular
    _evaluate = tabular.Tabular.evaluate
    _waited = []
    def _barrier():
        folder, count = os.environ["HWNAS_TEST_EVAL_BARRIER"].rsplit(":", 1)
        open(os.path.join(folder, str(os.getpid())), "w").close()
        deadline = time.time() + 240
        while len(os.listdir(folder)) < int(count) and time.time() < deadline:
            time.sleep(0.05)
    def evaluate(self, layers, seed):
        if os.environ.get("HWNAS_TEST_EVAL_BARRIER") and not _waited:
            _waited.append(1)
            _barrier()
        time.sleep(float(os.environ["HWNAS_TEST_EVAL_SLEEP"]))
        return _evaluate(self, layers, seed)
    tabular.Tabular.evaluate = evaluate
'''


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("bench") / "bench.csv")


@pytest.fixture
def here(tmp_path, monkeypatch, bench_file):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench.csv").write_bytes(bench_file.read_bytes())
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW)
    return tmp_path


def slow_env(here, sleep: float, barrier: int = 0) -> dict:
    path = os.pathsep.join([str(here / "site"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path, "HWNAS_TEST_EVAL_SLEEP": str(sleep), "HWNAS_PROGRESS": "0",
           "OMP_NUM_THREADS": "1"}
    if barrier:  # every evaluating process waits for `barrier` of them before its first evaluation
        (here / "arrived").mkdir(exist_ok=True)
        env["HWNAS_TEST_EVAL_BARRIER"] = f"{here / 'arrived'}:{barrier}"
    return env


def hwnas(here, sleep: float, *args, barrier: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hwnas", *args], cwd=here, env=slow_env(here, sleep, barrier),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def journal(tmp_path, name="j.journal"):
    return open_storage(f"journal:{tmp_path / name}")


def run_dir_of(here) -> Path:
    dirs = [p.parent for p in (here / "runs").glob("*/config.json")]
    assert len(dirs) == 1, dirs
    return dirs[0]


# -- the claim rules, the heartbeat -----------------------------------------------------------------------
def test_a_claim_yields_to_a_lower_numbered_trial_of_the_same_arch_and_to_the_budget(tmp_path):
    study = create_study(journal(tmp_path), "s", {"kind": "selection"})
    a, b, c = study.ask(), study.ask(), study.ask()
    for t, arch in ((a, ["x", "y"]), (b, ["x", "y"]), (c, ["x", "z"])):
        t.set_user_attr("arch", arch)
    trials = study.get_trials()
    assert _clash(trials, a.number, ("x", "y"), 5) is None
    assert _clash(trials, b.number, ("x", "y"), 5) == ("duplicate_of", a.number)  # the later claim yields
    assert _clash(trials, c.number, ("x", "z"), 5) is None
    assert _clash(trials, c.number, ("x", "z"), 2) == ("over_budget", 2)  # a and b already fill a budget of 2
    study.tell(a, 1.0)
    study.tell(b, state=TrialState.PRUNED)  # a pruned claim no longer counts
    trials = study.get_trials()
    assert _clash(trials, c.number, ("x", "z"), 2) is None
    assert study.user_attrs["hwnas_config"] == {"kind": "selection"}
    again = create_study(journal(tmp_path), "s", {"kind": "other"})  # a second launcher keeps the first config
    assert again.user_attrs["hwnas_config"] == {"kind": "selection"}


def test_a_trial_without_heartbeat_is_failed_after_the_grace_and_its_arch_retried(tmp_path):
    study = create_study(journal(tmp_path), "s", {})
    dead, alive = study.ask(), study.ask()
    for t, arch, beat in ((dead, ["a"], 100.0), (alive, ["b"], 158.0)):
        t.set_user_attr("arch", arch)
        t.set_user_attr("heartbeat", beat)
    # heartbeat 10 s: dead after 60 s without one
    assert fail_stale(study, study.get_trials(), heartbeat=10, now=161.0) == [dead.number]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert "no heartbeat for 61 s" in trials[0].user_attrs["failed"]
    assert _retry(trials, busy={("b",)}) == (["a"], dead.number)
    assert _retry(trials, busy={("a",), ("b",)}) == (None, None)  # someone already took it again
    assert fail_stale(study, study.get_trials(), heartbeat=10, now=161.0) == []  # nothing failed twice


def test_workers_seed_their_selectors_apart():
    assert worker_seed(0, "m:1") != worker_seed(0, "m:2")
    assert worker_seed(3, "m:1") == worker_seed(3, "m:1")


# -- worker processes --------------------------------------------------------------------------------------
def test_two_workers_complete_the_count_with_no_arch_twice(here):
    p = hwnas(here, 0.25, "search", "--method", "evolution", *TAB, "--trials", "20", "--workers", "2",
              "--seed", "1", barrier=2)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    run_dir = run_dir_of(here)
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and [r["trial"] for r in rows] == list(range(20))
    assert len({tuple(r["arch"]) for r in rows}) == 20  # no architecture evaluated twice
    workers = {r["worker"] for r in rows}
    assert len(workers) == 2 and len(list((here / "arrived").iterdir())) == 2, workers
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sorted(summary["workers"]) == sorted(workers) and summary["trials"] == 20
    assert summary["predicted_latency_ms"] <= summary["target_ms"]
    study = optuna.load_study(storage=open_storage(f"journal:{run_dir / 'study.journal'}"), study_name=run_dir.name)
    done = completed(study.get_trials())
    assert len(done) == 20 and not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    # each worker's own log holds what it ran, and their union is the merged view
    logs = [json.loads(line) for f in (run_dir / "workers").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["study_trial"] for r in logs) == sorted(r["study_trial"] for r in rows)


def test_a_worker_killed_mid_trial_loses_nothing_and_a_new_worker_completes_the_count(here, capsys):
    store = f"journal:{here / 'shared.journal'}"
    p = hwnas(here, 0.4, "search", "--method", "random", *TAB, "--trials", "10", "--storage", store,
              "--heartbeat", "0.3", "--seed", "2")
    try:
        deadline, study = time.time() + 120, None
        while time.time() < deadline:
            time.sleep(0.2)
            if study is None:
                dirs = list((here / "runs").glob("*/config.json"))
                try:
                    study = optuna.load_study(storage=open_storage(store), study_name=dirs[0].parent.name) if dirs else None
                except ValueError:  # not created yet
                    study = None
                continue
            trials = study.get_trials()
            if len(completed(trials)) >= 3 and any(t.state == TrialState.RUNNING for t in trials):
                break
        else:
            pytest.fail("the first worker did not get going: " + (p.communicate(timeout=5)[0] if p.poll() else ""))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    run_dir = run_dir_of(here)
    before = {t.number: t.user_attrs["arch"] for t in completed(study.get_trials())}
    stranded = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert len(stranded) == 1 and not (run_dir / "summary.json").exists()
    code, out, err = run(capsys, "worker", "--study", str(run_dir))
    assert code == 0, err
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and len({tuple(r["arch"]) for r in rows}) == 10
    kept = {r["study_trial"]: r["arch"] for r in rows}
    assert all(kept[n] == a for n, a in before.items())  # the killed worker's finished trials stand
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [stranded[0].number] and "no heartbeat" in failed[0].user_attrs["failed"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == stranded[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE  # its architecture evaluated after all
    assert retried[0].user_attrs["arch"] == stranded[0].user_attrs["arch"]
    assert len({r["worker"] for r in rows}) == 2
    assert "had no heartbeat" in err


# -- refusals ----------------------------------------------------------------------------------------------
def test_bad_storages_are_refused_in_one_line(here, capsys):
    cases = [("sqlite:///x.db", "SQLite locks out parallel writers"),
             (f"journal:{here / 'nowhere' / 'j.journal'}", "does not exist"),
             (f"journal:{here}", "is a directory"),
             ("redis://localhost/0", "unknown kind of storage"),
             ("postgresql://me:secret@127.0.0.1:1/db", "postgresql://me:***@127.0.0.1:1/db")]
    for url, message in cases:
        code, _, err = run(capsys, "search", "--method", "random", *TAB, "--trials", "3", "--storage", url)
        assert_one_line_error(code, err, message)
        assert "secret" not in err
    assert not list((here / "runs").glob("*")) if (here / "runs").exists() else True  # nothing written
    assert redact("postgresql://u:p@h/db") == "postgresql://u:***@h/db" and redact("journal:/a:b@c") == "journal:/a:b@c"


def test_workers_belong_to_multi_trial_methods_and_parallel_runs(here, capsys):
    code, _, err = run(capsys, "search", "--method", "proxyless", "--workers", "2", "--latency-target", "50%")
    assert_one_line_error(code, err, "--storage, --workers and --engine belong to the multi-trial methods")
    code, _, err = run(capsys, "search", "--method", "random", *TAB, "--trials", "3", "--workers", "0")
    assert_one_line_error(code, err, "--workers must be >= 1")
    code, _, err = run(capsys, "search", "--method", "random", *TAB, "--trials", "3", "--heartbeat", "0")
    assert_one_line_error(code, err, "--heartbeat must be > 0")
    code, _, err = run(capsys, "search", "--method", "random", *TAB, "--trials", "3")
    assert code == 0, err
    run_dir = run_dir_of(here)
    code, _, err = run(capsys, "worker", "--study", str(run_dir))
    assert_one_line_error(code, err, "a sequential search")
    code, _, err = run(capsys, "worker", "--study", "no-such-run")
    assert_one_line_error(code, err, "not a run directory")
    code, _, err = run(capsys, "worker", "--study", "no-such-study", "--storage", f"journal:{here / 'j.journal'}")
    assert_one_line_error(code, err, "no study 'no-such-study'")


def test_ray_engine_runs_one_trial_per_task_on_the_study(here):
    pytest.importorskip("ray")
    p = hwnas(here, 0.3, "search", "--method", "evolution", *TAB, "--trials", "8", "--engine", "ray", "--workers", "2",
              "--seed", "3", barrier=2)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    assert "Ray: 2 trial tasks at a time (1 CPU, 0 GPU each)" in out
    run_dir = run_dir_of(here)
    rows = [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len({tuple(r["arch"]) for r in rows}) == 8
    driver = [line for line in out.splitlines() if line.startswith("worker ")][0].split()[1]
    workers = {r["worker"] for r in rows}
    assert len(workers) == 2 and driver not in workers, (driver, workers)  # the tasks evaluate, not the driver
    study = optuna.load_study(storage=open_storage(f"journal:{run_dir / 'study.journal'}"), study_name=run_dir.name)
    assert len(completed(study.get_trials())) == 8
    assert not [t for t in study.get_trials() if t.state in (TrialState.RUNNING, TrialState.FAIL)]


def test_an_unreachable_ray_cluster_is_refused_in_one_line_before_anything_is_written(here, capsys):
    pytest.importorskip("ray")
    code, _, err = run(capsys, "search", "--method", "random", *TAB, "--trials", "3", "--engine", "ray",
                       "--ray-address", "127.0.0.1:1")
    assert_one_line_error(code, err, "--ray-address 127.0.0.1:1: cannot connect to Ray")
    assert not (here / "runs").exists() or not list((here / "runs").iterdir())
