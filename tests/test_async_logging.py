"""Metrics are logged asynchronously (a training step only queues them) and flushed before a run is closed:
on a real MLflow store with real training of a tiny config, every metric history is complete, in step order and
without a step twice, after a run that finishes, one that raises mid-training, and one resumed after that."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, venv_env

from usam.config import compose
from usam.data import build_dataset, preprocess_dataset
from usam.errors import UsamError
from usam.track import client_for, tracked_run
from usam.train import fit
from usam.train.hooks import HookBase

# 12 videos / batch 4: 3 steps an epoch, 9 in all; every step logged, a checkpoint every 2 steps within an epoch
EVAL = [o for o in TINY if o.startswith(("data.", "evaluator."))] + [
    "evaluator.train.epochs=3", "evaluator.train.max_steps=9", "evaluator.train.runtime.log_every=1",
    "evaluator.train.runtime.checkpoint_every=2"]
TRAIN_KEYS = ("train/ce", "train/acc", "train/lr", "train/grad_norm", "train/samples_per_s")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("asynclog")
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(EVAL)
    build_dataset(cfg, "moving_digits", root / "data" / "raw" / "moving_digits")
    preprocess_dataset(cfg, root / "data" / "raw" / "moving_digits", root / "data" / "prepared" / "moving_digits")
    return root


@pytest.fixture
def slow_store(monkeypatch):
    """A store that takes its time over every batch of metrics: what a run has not flushed is then still
    missing when the run says it is done."""
    from mlflow.tracking import MlflowClient

    log_batch = MlflowClient.log_batch

    def slow(self, run_id, metrics=(), *args, **kwargs):
        if metrics:
            time.sleep(0.3)
        return log_batch(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", slow)


class FailAt(HookBase):
    """Raises after optimizer step ``step``, before that step is logged (it runs before the logging hook)."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self) -> None:
        if self.trainer.progress.step == self.step:
            raise RuntimeError(f"injected failure at step {self.step}")


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_every_metric_of_a_finished_run_is_stored_in_step_order(project: Path, slow_store):
    cfg = compose(EVAL)
    result = fit(cfg, "evaluator_frame", root=project)
    client = client_for(cfg, project)
    record = client.get_run(result.run_id)
    assert record.info.status == "FINISHED"
    for key in TRAIN_KEYS:
        assert _steps(client, result.run_id, key) == list(range(1, 10)), key
    assert _steps(client, result.run_id, "val/loss") == [3, 6, 9]
    assert _steps(client, result.run_id, "epoch") == [3, 6, 9]
    assert _steps(client, result.run_id, "train_seconds") == [9]


def test_a_run_that_raises_keeps_every_metric_and_its_resume_logs_no_step_twice(project: Path, slow_store):
    cfg = compose(EVAL)
    client = client_for(cfg, project)
    with pytest.raises(UsamError, match="injected failure at step 6"):
        fit(cfg, "evaluator_frame", root=project, run_name="fails", hooks=(FailAt(6),))
    (failed,) = client.search_runs([client.get_experiment_by_name("usam").experiment_id],
                                   "attributes.run_name = 'fails'")
    assert failed.info.status == "FAILED"
    # steps 1-5 were logged (the last checkpoint was at step 4); none was lost to the error
    for key in TRAIN_KEYS:
        assert _steps(client, failed.info.run_id, key) == [1, 2, 3, 4, 5], key
    assert _steps(client, failed.info.run_id, "val/loss") == [3]

    resumed = fit(cfg, "evaluator_frame", root=project, resume_run_id=failed.info.run_id)
    assert resumed.run_id == failed.info.run_id and client.get_run(resumed.run_id).info.status == "FINISHED"
    for key in TRAIN_KEYS:  # step 5 ran again after the step-4 checkpoint: it is in the store once
        assert _steps(client, resumed.run_id, key) == list(range(1, 10)), key
    assert _steps(client, resumed.run_id, "val/loss") == [3, 6, 9]


def test_many_metrics_logged_at_once_are_all_stored_in_order_when_the_run_closes(project: Path, slow_store):
    cfg = compose(EVAL)
    with tracked_run(cfg, stage="burst", root=project) as run:
        for step in range(2500):  # more than two of MLflow's batches; log_metrics only queues them
            run.log_metrics({"a": step, "b": -step}, step=step)
    client = client_for(cfg, project)
    assert client.get_run(run.run_id).info.status == "FINISHED"
    for key, sign in (("a", 1), ("b", -1)):
        history = client.get_metric_history(run.run_id, key)
        assert [m.step for m in history] == list(range(2500))
        assert [m.value for m in history] == [sign * float(s) for s in range(2500)]


def test_a_one_worker_run_neither_starts_nor_imports_ray(project: Path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from usam.config import compose\n"
        "from usam.train import fit\n"
        f"result = fit(compose({EVAL!r}), 'evaluator_frame', root=Path({str(project)!r}))\n"
        "print('ray imported:', 'ray' in sys.modules)\n"
    )
    env = venv_env(PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)  # no cluster to join: the stage trains in its own process
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ray imported: False" in proc.stdout
