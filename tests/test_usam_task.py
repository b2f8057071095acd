"""USAM training on a frozen tokenizer: conditions, the loss, self-correction, sampling by name, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usam.artifacts.layout import Layout, Weights
from usam.artifacts.sampling import Sampler, classify_frames
from usam.config import compose
from usam.data import build_dataset, preprocess_dataset
from usam.data.text import UNKNOWN_WORD, build_vocabulary, encode_text
from usam.errors import UsamError
from usam.eval.class_grid import class_grid
from usam.eval.generators import load_generator
from usam.models.evaluators import FrameClassifier
from usam.train.checkpoint import atomic_torch_save
from usam.train.tasks import make_task

DATA = ["data.num_videos.train=16", "data.num_videos.val=4", "data.num_videos.test=4"]
TINY = [*DATA, "tokenizer.arch.base_channels=8", "tokenizer.quantizer.bits=8", "model.width=32", "model.depth=2",
        "model.heads=2", "model.dropout=0", "model.drop_path=0", "model.conditioning.dropout=0"]


def _export_tokenizer(root: Path, cfg) -> Path:
    """An (untrained) tokenizer saved exactly the way the tokenizer stage saves one."""
    task = make_task("tokenizer", cfg, Layout(root, root / "data"))
    torch.manual_seed(0)
    model = task.build_model()
    path = root / "models" / "tokenizer" / cfg.data.name / "tokenizer.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"model": model.state_dict(), "progress": {}, "task": "tokenizer", **task.export_meta()}, path)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("usam")
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(TINY)
    for name in ("moving_digits", "bouncing_shapes"):
        build_dataset(cfg, name, root / "data" / "raw" / name)
        preprocess_dataset(cfg, root / "data" / "raw" / name, root / "data" / "prepared" / name)
    _export_tokenizer(root, cfg)
    return root


def _task(root: Path, *overrides: str):
    return make_task("usam", compose([*TINY, *overrides]), Layout(root, root / "data"))


def test_usam_needs_its_tokenizer_and_supported_conditions_before_training(project: Path):
    _task(project).check_data()
    with pytest.raises(UsamError, match="trained tokenizer") as err:
        _task(project, "data.name=bouncing_shapes").check_data()
    assert "dvc repro tokenizer@bouncing_shapes" in err.value.fix
    with pytest.raises(UsamError, match="no action cues"):
        _task(project, "model.conditioning.action=true").check_data()
    with pytest.raises(UsamError, match="trained on 8 frames"):
        _task(project, "preprocess.augment.clip_frames=5").check_data()


def test_batches_carry_every_switched_on_condition(project: Path):
    task = _task(project, "model.conditioning.text=true")
    item = task.dataset("train", train=False)[0]
    assert set(item) >= {"video", "class", "text"} and "action" not in item
    assert item["class"] == item["label"] and item["text"].shape == (16,)
    vocab = task.vocabulary()
    caption = task.dataset("train", train=False).base.meta()["captions"][0]
    assert torch.equal(item["text"], encode_text(caption, vocab))
    model = task.build_model()
    assert model.text is not None and model.class_embed.num_embeddings == 11  # 10 digits + the null class


def test_text_encoding_handles_unknown_words_and_length():
    vocab = build_vocabulary(["digit 3 bouncing fast", "digit 5 bouncing slow"])
    assert vocab == {"3": 2, "5": 3, "bouncing": 4, "digit": 5, "fast": 6, "slow": 7}
    ids = encode_text("Digit 3, bouncing WILDLY", vocab, length=6)
    assert ids.tolist() == [5, 2, 4, UNKNOWN_WORD, 0, 0]
    assert encode_text("a b c d e f g h", vocab, length=4).tolist() == [UNKNOWN_WORD] * 4


def test_a_tiny_overfit_run_drives_the_bit_loss_down(project: Path):
    task = _task(project, "model.loss.self_correction=0")
    torch.manual_seed(0)
    model = task.build_model()
    data = task.dataset("train", train=False)
    batch = torch.utils.data.default_collate([data[i] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    losses = []
    for step in range(80):
        loss, parts = task.loss(model, batch, torch.device("cpu"), step)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] > 0.6  # about log 2: nothing known yet
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    sums = task.evaluate(model, torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(8)), batch_size=4),
                         torch.device("cpu"))
    scores = task.summarize(sums)
    assert scores["val_bit_acc"] > 0.8 and 0 <= scores["val_loss"] < losses[0]


def test_self_correction_changes_the_training_targets(project: Path):
    batch = torch.utils.data.default_collate([_task(project).dataset("train", train=False)[i] for i in range(4)])
    losses = []
    for share in (0.0, 0.5):
        task = _task(project, f"model.loss.self_correction={share}")
        torch.manual_seed(0)
        model = task.build_model()
        torch.manual_seed(1)
        losses.append(task.loss(model, batch, torch.device("cpu"))[0].item())
    assert losses[0] != losses[1]


def test_the_sampler_refuses_unknown_names_and_forces_context_frames(project: Path, tmp_path: Path):
    task = _task(project, "model.conditioning.context_frames=true")
    torch.manual_seed(0)
    model = task.build_model()
    path = tmp_path / "usam.pt"
    atomic_torch_save({"model": model.state_dict(), "task": "usam", **task.export_meta()}, path)
    sampler = Sampler.load(path, None, project)
    with pytest.raises(UsamError, match="unknown class '11'") as err:
        sampler.conditions(2, klass="11")
    assert "0, 1, 2" in err.value.fix
    with pytest.raises(UsamError, match="not trained with action"):
        sampler.conditions(2, action="left+speed_up")
    with pytest.raises(UsamError, match="not trained with text"):
        sampler.conditions(2, text="digit 3")
    video = task.dataset("test", train=False)[0]["video"].transpose(0, 1)
    cond, forced, _ = sampler.conditions(2, klass="3", context=video)
    assert cond["class"].tolist() == [3, 3] and cond["context"].shape == (2, 8, 1, 4, 4)
    bits = sampler.model.generate(sampler.tokenizer.quantizer, cond, 2, forced=forced, top_k=1)
    given, _ = sampler.tokenizer.encode(video[None])
    for i in range(len(sampler.model.schedule.scales)):
        assert torch.equal(bits[i], given[i].expand_as(bits[i]))
    videos = sampler.sample(cond, 2, task.mcfg.sampling, seed=0, forced=forced)
    assert videos.shape == (2, 3, 8, 32, 32) and float(videos.min()) >= 0 and float(videos.max()) <= 1
    again = sampler.sample(cond, 2, task.mcfg.sampling, seed=0, forced=forced)
    assert torch.equal(videos, again)  # seeded


class _Client:
    """What the class grid logs, kept instead of sent to MLflow."""

    def __init__(self):
        self.artifacts, self.metrics = [], {}

    def log_artifact(self, run_id: str, path: str, folder: str) -> None:
        self.artifacts.append((Path(path).name, folder))

    def log_metric(self, run_id: str, key: str, value: float) -> None:
        self.metrics[key] = value


def test_the_class_grid_samples_usam_as_the_sampler_does_and_scores_it(project: Path, tmp_path: Path):
    task = _task(project)
    torch.manual_seed(0)
    model = task.build_model()
    path = tmp_path / "usam.pt"
    atomic_torch_save({"model": model.state_dict(), "task": "usam", **task.export_meta()}, path)
    sampler = Sampler.load(path, None, project)
    gen = load_generator("usam", task.cfg, Layout(project, project / "data"), path, None)
    labels, names = task.grid_conditions(1, torch.device("cpu"))
    expected = sampler.sample(labels, len(names), task.mcfg.sampling, seed=3)
    assert torch.equal(gen.sample_labels(labels, len(names), seed=3), expected)
    assert torch.equal(gen.sample(labels["class"], seed=3), expected)

    judge = tmp_path / "frame.pt"
    torch.manual_seed(0)
    atomic_torch_save({"model": FrameClassifier(num_classes=len(names), width=8, stages=2).state_dict()}, judge)
    client, cfg = _Client(), compose([*TINY, "model.sampling.per_class=1", "seed=3"])
    scores = class_grid(gen, cfg, tmp_path / "samples", client, "run", lambda: Weights(judge, None, "judge"), mp4=False)
    predicted = classify_frames(expected, judge, None, sampler.meta["normalize"])
    accuracy = float((predicted == labels["class"]).float().mean())
    assert scores == {"sample_class_acc": accuracy, "chance": 1 / len(names)}
    assert client.metrics == {"samples/class_acc": accuracy}
    assert client.artifacts and all(folder == "samples" for _, folder in client.artifacts)


@pytest.mark.parametrize("flags, message", [
    (["--num", "0"], "argument --num: 0 is below 1: give an integer >= 1"),
    (["--num", "-1"], "argument --num: -1 is below 1: give an integer >= 1"),
    (["--num", "two"], "argument --num: 'two' is not an integer"),
    (["--seed", "-1"], "argument --seed: -1 is below 0: give an integer >= 0"),
    (["--seed", str(2**64)], "argument --seed: 18446744073709551616 is too large"),
    (["--cfg", "nan"], "argument --cfg: nan is not allowed: give a finite number >= 0.0 and <= 50.0 "
                       "(the range of model.sampling.cfg)"),
    (["--cfg", "inf"], "argument --cfg: inf is not allowed"),
    (["--cfg", "-1"], "argument --cfg: -1 is not allowed"),
    (["--temperature", "-1"], "argument --temperature: -1 is not allowed: give a finite number >= 0.0 and <= 10.0"),
    (["--temperature", "nan"], "argument --temperature: nan is not allowed"),
    (["--top-p", "5"], "argument --top-p: 5 is not allowed: give a finite number >= 0.0 and <= 1.0"),
    (["--top-p", "-0.1"], "argument --top-p: -0.1 is not allowed"),
    (["--context", "test"], "argument --context: 'test' is not SPLIT:INDEX"),
])
def test_a_bad_sampling_flag_is_an_argparse_error_before_anything_loads(empty_project: Path, flags, message):
    from conftest import run

    proc = run(["usam", "sample", "latest", *flags], cwd=empty_project, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (empty_project / "mlflow.db").exists()  # no tracking store opened, no run looked up
