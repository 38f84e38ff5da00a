"""Job backends: the local pool and Ray give the same rows; Ray retries dead workers; clear errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from training import backend, evaluate
from training.backend import START_ATTEMPTS, Backend, BackendError, connect, map_jobs, resolve_ray, use_ray
from training.evaluate import Job, execute

GRID = ["--scenarios", "colocated", "--controllers", "static", "centralized", "--seeds", "0", "1",
        "--duration", "5", "--no-mlflow", "--quiet"]


def _square(x: int) -> int:
    return x * x


def _runs(out: Path) -> pd.DataFrame:
    """runs.csv without the wall times (the only column that depends on the machine)."""
    return pd.read_csv(out / "runs.csv").drop(columns=["wall_s"])


def test_pool_and_in_process_give_the_same_results_in_job_order():
    jobs = [Job("run", "colocated", "static", seed, 3.0, None) for seed in (0, 1, 2)]
    assert map_jobs(_square, list(range(7)), workers=2, progress=False) == [x * x for x in range(7)]
    with Backend(workers=2) as pooled:
        a = pooled.map(execute, jobs, progress=False)
    b = map_jobs(execute, jobs, workers=1, progress=False)
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in a], [{k: v for k, v in r.items() if k != "wall_s"} for r in b]
    assert strip[0] == strip[1]
    assert [r["seed"] for r in a] == [0, 1, 2]


def test_backend_choice_follows_flag_then_default_then_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_ray(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_ray(None) == "10.0.0.1:6379"
    assert resolve_ray("auto") == "auto"
    try:
        use_ray(False)  # inside a Ray trial: always the pool
        assert resolve_ray(None) is None
        use_ray("")
        assert resolve_ray(None) == ""
    finally:
        use_ray(None)


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BackendError, match=r'pip install -e "\.\[ray\]"'):
        Backend(ray="")
    assert evaluate.main([*GRID, "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Ray is not installed") and "\n" not in err


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "nohost"])
def test_bad_ray_address_is_one_line_naming_the_fix(address, capsys):
    pytest.importorskip("ray")
    assert evaluate.main([*GRID, "--ray", address]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and address in err and "ray start --head" in err


# -- a local Ray instance ------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_with_ray_gives_the_same_rows_as_the_pool(local_ray, tmp_path):
    assert evaluate.main([*GRID, "--workers", "2", "--out", str(tmp_path / "pool")]) == 0
    assert evaluate.main([*GRID, "--ray", "--out", str(tmp_path / "ray")]) == 0
    pd.testing.assert_frame_equal(_runs(tmp_path / "pool"), _runs(tmp_path / "ray"))


@pytest.mark.slow
def test_a_ray_task_whose_worker_dies_is_retried_and_the_grid_completes(local_ray, tmp_path):
    marker = tmp_path / "died-once"
    jobs = [Job("run", "colocated", "static", seed, 3.0, None) for seed in (0, 1, 2, 3)]

    def flaky(job: Job) -> dict:  # pickled by value: the worker kills itself the first time it sees seed 2
        if job.seed == 2 and not marker.exists():
            marker.touch()
            os._exit(1)
        return execute(job)

    rows = map_jobs(flaky, jobs, ray="", progress=False)
    assert marker.exists()
    assert [r["seed"] for r in rows] == [0, 1, 2, 3]
    again = map_jobs(execute, jobs[2:3], workers=1, progress=False)[0]
    assert rows[2]["goodput_rps"] == again["goodput_rps"]


@pytest.mark.slow
def test_a_job_that_raises_is_not_retried_and_surfaces_its_own_error(local_ray):
    with pytest.raises(ValueError, match="unknown controller"):
        map_jobs(execute, [Job("run", "colocated", "nope", 0, 3.0, None)], ray="", progress=False)


class _FlakyRay:
    """A stand-in for the ``ray`` module whose ``init`` fails ``failures`` times with ``error``."""

    def __init__(self, failures: int, error: str) -> None:
        self.failures, self.error, self.inits, self.shutdowns = failures, error, 0, 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.inits += 1
        if self.inits <= self.failures:
            raise RuntimeError(self.error)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_ray_start_up_timeout_is_retried_after_cleaning_up(monkeypatch, capsys):
    fake = _FlakyRay(failures=START_ATTEMPTS - 1, error="The current node timed out during startup.")
    monkeypatch.setattr(backend, "ray_module", lambda: fake)
    assert connect("local", num_cpus=2) is fake
    assert fake.inits == START_ATTEMPTS and fake.shutdowns == START_ATTEMPTS - 1
    assert capsys.readouterr().err.count("retrying") == START_ATTEMPTS - 1


def test_ray_start_up_gives_up_after_its_attempts_and_other_errors_are_not_retried(monkeypatch):
    fake = _FlakyRay(failures=START_ATTEMPTS, error="Timed out waiting for file gcs_server_port")
    monkeypatch.setattr(backend, "ray_module", lambda: fake)
    with pytest.raises(BackendError, match="Timed out waiting for file .*ray start --head"):
        connect("local")
    assert fake.inits == START_ATTEMPTS
    fake = _FlakyRay(failures=1, error="object store memory must be positive")
    monkeypatch.setattr(backend, "ray_module", lambda: fake)
    with pytest.raises(BackendError, match="object store memory"):
        connect("local")
    assert fake.inits == 1


def _record_pid_then_sleep(directory: str) -> int:
    Path(directory, str(os.getpid())).touch()
    import time

    time.sleep(30)
    return os.getpid()


def test_a_terminated_grid_takes_its_pool_workers_with_it(tmp_path):
    """SIGTERM (kill, a scheduler's time limit) must not leave spawned workers running, orphaned."""
    import signal
    import subprocess
    import time

    script = ("import sys; from training.backend import map_jobs; from tests.test_backend import _record_pid_then_sleep; "
              f"map_jobs(_record_pid_then_sleep, [{str(tmp_path)!r}] * 4, workers=2, progress=False)")
    p = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:  # both workers are in a job
        time.sleep(0.1)
    workers = [int(f.name) for f in tmp_path.iterdir()]
    assert len(workers) == 2, "the workers never started"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)
