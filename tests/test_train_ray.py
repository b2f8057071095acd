"""The training harness on a real local Ray instance (Train V2, DDP over gloo on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from usam.artifacts.layout import Layout
from usam.config import compose
from usam.data import build_dataset, preprocess_dataset
from usam.errors import DataError, UsamError
from usam.track import client_for
from usam.train import checkpoint as ckpt
from usam.train import fit
from usam.train.tasks import make_task

pytestmark = pytest.mark.slow

DATA = ["data.num_videos.train=48", "data.num_videos.val=8", "data.num_videos.test=8"]
# 2 workers x 24 videos / batch 4: 6 steps an epoch; 8 steps cross the epoch boundary.
SMALL_RUN = [
    "data.name=bouncing_shapes", "evaluator.clip.width=8", "evaluator.train.batch_size=4",
    "evaluator.train.epochs=2", "evaluator.train.max_steps=8", "evaluator.train.warmup_steps=2",
    "evaluator.train.runtime.checkpoint_every=3", "evaluator.train.runtime.log_every=2", "evaluator.train.runtime.max_failures=1",
    "evaluator.train.runtime.cpus_per_worker=1", "evaluator.train.runtime.threads_per_worker=1", "evaluator.train.precision=fp32",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory, ray_instance) -> Path:
    """A project with both datasets built and preprocessed (small)."""
    root = tmp_path_factory.mktemp("train")
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(DATA)
    for name in ("bouncing_shapes", "moving_digits"):
        build_dataset(cfg, name, root / "data" / "raw" / name)
        preprocess_dataset(cfg, root / "data" / "raw" / name, root / "data" / "prepared" / name)
    return root


def _weights(result) -> dict:
    return torch.load(result.weights_path, weights_only=True)["model"]


def test_ddp_ranks_agree_and_a_killed_worker_resumes_bit_exactly(project: Path):
    plain = fit(compose([*DATA, *SMALL_RUN, "evaluator.train.runtime.workers=2"]), "evaluator_clip", root=project)
    chaos_cfg = compose([*DATA, *SMALL_RUN, "evaluator.train.runtime.workers=2", "debug.fault_injection_step=5"])
    chaos = fit(chaos_cfg, "evaluator_clip", root=project)

    # the failure really happened (after the step-3 checkpoint, mid-epoch) and training went on
    assert (project / "outputs" / "ray" / chaos.ray_run_name / ".fault-injected").is_file()
    assert plain.metrics["step"] == chaos.metrics["step"] == 8
    # bit-identical final weights, uninterrupted vs killed-and-resumed
    a, b = _weights(plain), _weights(chaos)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert plain.weights_sha256 != "" and ckpt.state_digest(a) == ckpt.state_digest(b)
    # and training did change the weights
    task = make_task("evaluator_clip", chaos_cfg, Layout(project, project / "data"))
    torch.manual_seed(chaos_cfg.seed)
    init = task.build_model().state_dict()
    assert any(not torch.equal(init[k], a[k]) for k in a)
    # both DDP ranks held the same weights at the last checkpoint
    folder = Path(chaos.checkpoint_path)
    digests = {torch.load(folder / f"rank{r}.pt", weights_only=True)["weights_sha256"] for r in (0, 1)}
    assert digests == {ckpt.state_digest(a)}

    # MLflow holds the curves, the checkpoint hash and the checkpoint itself
    client = client_for(chaos_cfg, project)
    record = client.get_run(chaos.run_id)
    assert record.info.status == "FINISHED"
    assert record.data.tags["checkpoint.sha256"] == chaos.weights_sha256
    assert int(record.data.tags["model.parameters"]) == sum(t.numel() for t in a.values() if t.dtype.is_floating_point)
    assert {"train/ce", "train/lr", "train/grad_norm", "train/samples_per_s", "val/acc", "train_seconds"} <= set(
        record.data.metrics
    )
    assert [m.step for m in client.get_metric_history(chaos.run_id, "val/acc")][-1] == 8
    artifacts = {a.path for a in client.list_artifacts(chaos.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/weights.pt"}


def test_a_nan_loss_stops_with_the_step_named_and_keeps_the_last_good_checkpoint(project: Path):
    cfg = compose([*DATA, *SMALL_RUN, "debug.fault_injection_kind=nan_loss", "debug.fault_injection_step=4"])
    with pytest.raises(UsamError) as info:
        fit(cfg, "evaluator_clip", root=project)
    message = str(info.value)
    assert "NaN/inf at step 4" in message and "lower train.lr" in message
    last = Path(message.split("last good checkpoint: ")[1].splitlines()[0])
    shared, _ = ckpt.read(last, 0)  # verified against its checksums
    assert shared["progress"]["step"] == 3


def test_unplaceable_workers_and_missing_data_fail_before_training(project: Path, tmp_path: Path):
    with pytest.raises(UsamError, match=r"8 worker\(s\) need 8 CPU .* the Ray cluster has 2 CPU"):
        fit(compose([*DATA, *SMALL_RUN, "evaluator.train.runtime.workers=8"]), "evaluator_clip", root=project)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(DataError, match="dvc repro preprocess@bouncing_shapes"):
        fit(compose([*DATA, *SMALL_RUN]), "evaluator_clip", root=empty)
    assert not (empty / "mlflow.db").exists()  # nothing was started, nothing recorded


def test_the_clip_evaluator_learns_the_action_cue(tmp_path_factory, ray_instance):
    root = tmp_path_factory.mktemp("learn")
    (root / "dvc.yaml").write_text("stages: {}\n")
    data = ["data.num_videos.train=320", "data.num_videos.val=48", "data.num_videos.test=96"]
    cfg = compose([*data, "data.name=bouncing_shapes", "evaluator.train.batch_size=16", "evaluator.train.epochs=6",
                   "evaluator.train.precision=bf16"])
    build_dataset(cfg, "bouncing_shapes", root / "data" / "raw" / "bouncing_shapes")
    preprocess_dataset(cfg, root / "data" / "raw" / "bouncing_shapes", root / "data" / "prepared" / "bouncing_shapes")
    result = fit(cfg, "evaluator_clip", root=root)
    from usam.eval.evaluators import accuracy

    task = make_task("evaluator_clip", cfg, Layout(root, root / "data"))
    test = accuracy(task, result.weights_path, "test", expected_sha256=result.weights_sha256)
    assert test["chance"] == pytest.approx(1 / 8)
    assert test["acc"] >= 3 * test["chance"], test  # 8 action cues: a wide margin over chance


def test_usam_train_resume_continues_an_interrupted_run_bit_exactly(project: Path):
    import os
    import signal
    import subprocess
    import time

    from conftest import run, venv_env

    # also exercises gradient accumulation and the EMA, both of which must survive the restart
    overrides = [*DATA, *SMALL_RUN, "evaluator.train.max_steps=24", "evaluator.train.epochs=3",
                 "evaluator.train.grad_accum=2", "evaluator.train.batch_size=2", "evaluator.train.ema_decay=0.9"]
    runs_dir = project / "outputs" / "ray"
    before = set(runs_dir.iterdir()) if runs_dir.exists() else set()
    first = subprocess.Popen(["usam", "train", "evaluator_clip", *overrides], cwd=project, env=venv_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while True:  # interrupt as soon as the first checkpoint exists, like a Ctrl-C
        new = [d for d in (set(runs_dir.iterdir()) if runs_dir.exists() else set()) - before if d.is_dir()]
        if new and any(new[0].glob("checkpoint_*")):
            break
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)
    first.wait(timeout=120)
    told = first.stdout.read()
    assert first.returncode != 0 and "--resume" in told
    (ray_dir,) = new
    assert not (ray_dir / "final" / "weights.pt").exists(), "the first run finished before the interrupt"

    cfg = compose(overrides)
    client = client_for(cfg, project)
    (interrupted,) = [r for r in client.search_runs(["1"]) if r.data.tags.get("ray.run_name") == ray_dir.name]
    assert interrupted.info.status == "KILLED"
    assert interrupted.data.tags["usam.train.where"] == "this process (one worker, no Ray)"  # launcher auto: no Ray
    resumed = run(["usam", "train", "evaluator_clip", *overrides, "--resume", interrupted.info.run_id], cwd=project)
    assert f"run {interrupted.info.run_id}" in resumed.stdout
    assert client.get_run(interrupted.info.run_id).info.status == "FINISHED"

    reference = fit(cfg, "evaluator_clip", root=project)
    # every training run records what it trained on: each split as an MLflow dataset input, digest = content hash
    manifest = json.loads((project / "data" / "prepared" / "bouncing_shapes" / "manifest.json").read_text())
    for run_id in (reference.run_id, interrupted.info.run_id):  # the resumed run once, not twice
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in inputs) == ["bouncing_shapes/test", "bouncing_shapes/train",
                                                          "bouncing_shapes/val"]
        for i in inputs:
            assert i.dataset.digest == manifest["splits"][i.dataset.name.split("/")[1]]["content_sha256"][:32]
    resumed_file = torch.load(ray_dir / "final" / "weights.pt", weights_only=True)
    reference_file = torch.load(reference.weights_path, weights_only=True)
    for part in ("model", "ema"):
        a, b = resumed_file[part], reference_file[part]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), part
    model, ema = reference_file["model"], reference_file["ema"]
    assert any(not torch.equal(model[k], ema[k]) for k in ema)  # the EMA is a distinct average


def test_the_tokenizer_trains_on_two_ddp_workers_with_every_loss_and_logs_panels(project: Path):
    from usam.artifacts.loaders import load_tokenizer
    from usam.eval.tokenizer import score_tokenizer
    from usam.media.perceptual import DOMAIN_LABEL
    from usam.models.evaluators import FrameClassifier

    torch.manual_seed(0)  # a stand-in frame evaluator, saved the way the evaluators stage saves one
    judge = project / "judge.pt"
    torch.save({"model": FrameClassifier(num_classes=10, width=4, stages=2).state_dict(), "task": "evaluator_frame"}, judge)
    cfg = compose([
        *DATA, "data.name=moving_digits", "tokenizer.arch.base_channels=8", "tokenizer.quantizer.bits=8",
        "tokenizer.train.runtime.workers=2", "tokenizer.train.runtime.cpus_per_worker=1", "tokenizer.train.runtime.threads_per_worker=1",
        "tokenizer.train.batch_size=4", "tokenizer.train.max_steps=4", "tokenizer.train.epochs=1",
        "tokenizer.train.runtime.log_every=2", f"tokenizer.loss.perceptual.domain_weights={judge}",
        "tokenizer.loss.adversarial.weight=0.5", "tokenizer.loss.adversarial.start_step=2", "tokenizer.eval.panel_videos=2",
    ])
    result = fit(cfg, "tokenizer", root=project)
    assert result.metrics["step"] == 4
    finest = f"val_psnr_prefix_{len(cfg.tokenizer.quantizer.scales)}"
    side = cfg.tokenizer.quantizer.scales[-1]
    assert {"val_psnr", "val_ssim", f"val_{DOMAIN_LABEL}", finest, "val_bit_entropy"} <= set(result.metrics)

    client = client_for(cfg, project)
    metrics = client.get_run(result.run_id).data.metrics
    assert {"train/l1", "train/critic", "train/generator", f"train/{DOMAIN_LABEL}", "train/commitment",
            "val/psnr", "val/bit_entropy/img_1x1x1", f"val/bit_entropy/clip1_4x{side}x{side}"} <= set(metrics)
    panels = {a.path for a in client.list_artifacts(result.run_id, "panels/step_000004")}
    assert panels == {f"panels/step_000004/{n}" for n in ("reconstruction.png", "reconstruction.gif", "coarse_to_fine.png")}

    model, meta = load_tokenizer(result.weights_path, result.weights_sha256)
    assert meta["model_kwargs"]["bits"] == 8 and meta["perceptual"] == DOMAIN_LABEL and meta["frames"] == 8
    assert not hasattr(model, "discriminator")  # the critic is a training aid, not part of the tokenizer
    task = make_task("tokenizer", cfg, Layout(project, project / "data"))
    val = score_tokenizer(task, result.weights_path, "val", expected_sha256=result.weights_sha256)
    assert val["psnr"] == pytest.approx(result.metrics["val_psnr"], abs=1e-3)  # the export is what was validated
    bits, schedule = model.encode(torch.zeros(1, 3, 8, 32, 32))
    assert model.decode(bits, schedule, 8).shape == (1, 3, 8, 32, 32)
