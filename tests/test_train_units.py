"""Harness pieces without Ray: schedules, the resumable sampler, atomic checksummed checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from usam.config import compose
from usam.train import checkpoint as ckpt
from usam.train.sampler import ShardedEpochSampler
from usam.train.schedule import lr_factor


def _train(*overrides):
    return compose([f"train.{o}" for o in overrides]).train


def test_warmup_then_cosine_reaches_the_floor():
    cfg = _train("warmup_steps=10", "schedule=cosine", "min_lr_ratio=0.1")
    factors = [lr_factor(s, cfg, 110) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # cosine falls
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: half way down


def test_linear_constant_and_warm_restarts():
    linear = _train("warmup_steps=0", "schedule=linear", "min_lr_ratio=0.0")
    assert [lr_factor(s, linear, 4) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    constant = _train("warmup_steps=0", "schedule=constant")
    assert {lr_factor(s, constant, 50) for s in range(50)} == {1.0}
    restarts = _train("warmup_steps=0", "schedule=cosine_restarts", "restart_steps=10", "min_lr_ratio=0.0")
    cycle = [lr_factor(s, restarts, 1000) for s in range(10)]
    assert [lr_factor(s + 10, restarts, 1000) for s in range(10)] == pytest.approx(cycle)
    assert cycle[0] == 1.0 and cycle[5] == pytest.approx(0.5) and cycle[9] < 0.03


def test_sampler_shards_are_disjoint_cover_the_epoch_and_resume_mid_epoch():
    shards = [list(ShardedEpochSampler(10, rank=r, world=3, seed=1)) for r in range(3)]
    assert all(len(s) == 3 for s in shards)  # equal shards: 10 // 3 each
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    sampler = ShardedEpochSampler(10, rank=1, world=3, seed=1)
    sampler.set_epoch(0, start=2)
    assert list(sampler) == shards[1][2:] and len(sampler) == 1
    sampler.set_epoch(1)
    assert list(sampler) != shards[1]  # another epoch, another order
    assert list(ShardedEpochSampler(6, rank=0, world=1, seed=0, shuffle=False)) == list(range(6))


def test_checkpoint_round_trip_restores_every_rng(tmp_path):
    torch.manual_seed(3)
    state = ckpt.rng_state()
    expected = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    ckpt.write(tmp_path, 0, shared={"model": {"w": torch.ones(2)}, "progress": {"step": 4}}, local={"rng": state})
    shared, local = ckpt.read(tmp_path, 0)
    assert torch.equal(shared["model"]["w"], torch.ones(2)) and shared["progress"] == {"step": 4}
    ckpt.set_rng_state(local["rng"])
    again = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


@pytest.mark.parametrize("victim", ["state.pt", "rank0.pt"])
def test_a_tampered_checkpoint_file_is_refused_by_name(tmp_path, victim):
    ckpt.write(tmp_path, 0, shared={"model": {"w": torch.ones(2)}}, local={"rng": ckpt.rng_state()})
    data = bytearray((tmp_path / victim).read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / victim).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=victim):
        ckpt.read(tmp_path, 0)


def test_an_incomplete_checkpoint_is_refused(tmp_path):
    ckpt.write(tmp_path, 1, shared=None, local={"rng": ckpt.rng_state()})  # rank 1's part only
    with pytest.raises(ckpt.CheckpointError, match="no state.pt"):
        ckpt.read(tmp_path, 1)


WRITER = """
import sys, torch
from pathlib import Path
from usam.train.checkpoint import atomic_torch_save
path = Path(sys.argv[1])
i = 0
while True:
    i += 1
    atomic_torch_save({"version": torch.tensor(i), "blob": torch.full((4_000_000,), float(i))}, path)
    print(i, flush=True)
"""


def test_the_atomic_write_survives_a_kill_during_the_write(tmp_path):
    path = tmp_path / "state.pt"
    ckpt.atomic_torch_save({"version": torch.tensor(0), "blob": torch.zeros(4_000_000)}, path)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it complete a few 16 MB saves, so the kill lands inside a later one
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(path, weights_only=True)  # always a whole checkpoint, never a torn one
    version = int(state["version"])
    assert torch.equal(state["blob"], torch.full((4_000_000,), float(version)))
    assert version >= 1, "the writer never completed a save; the test proved nothing"


def test_exported_weights_with_a_wrong_hash_are_refused(tmp_path):
    from usam.artifacts.weights import load_weights

    path = tmp_path / "weights.pt"
    sha = ckpt.atomic_torch_save({"model": {"w": torch.ones(2)}}, path)
    assert torch.equal(load_weights(path, sha)["model"]["w"], torch.ones(2))
    with pytest.raises(ckpt.CheckpointError, match="does not match its recorded sha256"):
        load_weights(path, "0" * 64)


def test_usam_train_without_data_or_with_a_bad_config_is_one_clear_error(project):
    from conftest import run

    missing = run(["usam", "train", "evaluator_clip", "data.name=bouncing_shapes"], cwd=project, check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "no prepared train split for dataset 'bouncing_shapes'" in missing.stderr
    assert "dvc repro preprocess@bouncing_shapes" in missing.stderr
    assert not (project / "mlflow.db").exists() and not (project / "outputs").exists()
    bad = run(["usam", "train", "evaluator_clip", "evaluator.train.precision=fp16"], cwd=project, check=False)
    assert bad.returncode == 2 and "evaluator.train.precision = 'fp16' needs evaluator.train.runtime.use_gpu=true" in bad.stderr
    from usam.data import build_dataset, preprocess_dataset

    small = compose(["data.num_videos.train=6", "data.num_videos.val=2", "data.num_videos.test=2"])
    build_dataset(small, "moving_digits", project / "data" / "raw" / "moving_digits")
    preprocess_dataset(small, project / "data" / "raw" / "moving_digits", project / "data" / "prepared" / "moving_digits")
    too_few = run(["usam", "train", "evaluator_frame", "evaluator.train.batch_size=8"], cwd=project, check=False)
    assert too_few.returncode == 2 and "the train split has 6 videos: too few" in too_few.stderr
    assert not (project / "outputs").exists()  # refused before Ray started
    unknown = run(["usam", "train", "diffusion_xl"], cwd=project, check=False)
    assert unknown.returncode == 2 and "invalid choice: 'diffusion_xl'" in unknown.stderr
    no_judge = run(["usam", "train", "tokenizer"], cwd=project, check=False)
    assert no_judge.returncode == 2 and "needs the frame evaluator" in no_judge.stderr
    assert "dvc repro evaluators@moving_digits" in no_judge.stderr
    no_tokenizer = run(["usam", "train", "usam"], cwd=project, check=False)
    assert no_tokenizer.returncode == 2 and "dvc repro tokenizer@moving_digits" in no_tokenizer.stderr
    assert not (project / "outputs").exists()


def test_train_resume_refuses_another_task_a_finished_run_or_an_unknown_id_before_starting(project, capsys):
    from conftest import TINY

    from usam.cli import main
    from usam.data import build_dataset, preprocess_dataset
    from usam.track import client_for
    from usam.train import fit

    cfg = compose(TINY)
    build_dataset(cfg, "moving_digits", project / "data" / "raw" / "moving_digits")
    preprocess_dataset(cfg, project / "data" / "raw" / "moving_digits", project / "data" / "prepared" / "moving_digits")
    frame = fit(cfg, "evaluator_frame", root=project)
    client = client_for(cfg, project)

    def recorded():
        run = client.get_run(frame.run_id)
        history = {k: [(m.step, m.value) for m in client.get_metric_history(frame.run_id, k)] for k in run.data.metrics}
        return run.info.status, run.info.end_time, run.data.tags, run.data.metrics, history, run.data.params

    def runs():
        return sorted(r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()]))

    before, ray_runs, all_runs = recorded(), sorted((project / "outputs" / "ray").iterdir()), runs()
    assert before[0] == "FINISHED"
    for task, unknown, message in [
        ("evaluator_clip", False, f"run {frame.run_id} trained task evaluator_frame, not evaluator_clip"),
        ("evaluator_frame", False, f"run {frame.run_id} already finished; nothing to resume"),
        ("evaluator_frame", True, "no run '0123456789abcdef' in the tracking store"),
    ]:
        run_id = "0123456789abcdef" if unknown else frame.run_id
        assert main(["train", task, *TINY, "--resume", run_id]) == 2
        err = capsys.readouterr().err
        assert f"usam: error: {message}" in err and "Traceback" not in err, err
        if not unknown:
            assert ("usam train evaluator_frame --resume" if task == "evaluator_clip" else "start a new run") in err
        assert recorded() == before and runs() == all_runs
        assert sorted((project / "outputs" / "ray").iterdir()) == ray_runs  # nothing started
