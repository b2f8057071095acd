"""End to end on a small config: samples of a class are recognised as that class by the domain evaluator.

Real training of all three models (frame evaluator, tokenizer, USAM) through their tasks' losses,
then class-conditional sampling with the default guidance and temperature, judged by the frame
evaluator. Chance is 10%; the assertion asks for 3.5 times that, over 80 samples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from usam.artifacts.layout import Layout
from usam.artifacts.sampling import Sampler, classify_frames
from usam.config import compose
from usam.data import build_dataset, preprocess_dataset
from usam.train.checkpoint import atomic_torch_save
from usam.train.tasks import make_task

SMALL = ["data.frames=4", "data.num_videos.train=400", "data.num_videos.val=20", "data.num_videos.test=20",
         "tokenizer.arch.base_channels=16"]


def _train(task, model, steps: int, batch: int, lr: float) -> float:
    data = task.dataset("train", train=True)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=generator)
    opt = torch.optim.AdamW(model.parameters(), lr, betas=(0.9, 0.95), weight_decay=5e-3)
    model.train()
    step, loss = 0, torch.tensor(0.0)
    while step < steps:
        for batch_ in loader:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 20)
            loss, _ = task.loss(model, batch_, torch.device("cpu"), step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            step += 1
            if step == steps:
                break
    return float(loss)


def _save(task, model, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"model": model.state_dict(), "progress": {}, "task": task.name, **task.export_meta()}, path)
    return path


@pytest.mark.slow
def test_class_conditional_samples_are_recognised_far_above_chance(tmp_path: Path):
    torch.set_num_threads(2)
    root = tmp_path
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(SMALL)
    build_dataset(cfg, "moving_digits", root / "data" / "raw" / "moving_digits")
    preprocess_dataset(cfg, root / "data" / "raw" / "moving_digits", root / "data" / "prepared" / "moving_digits")
    data = root / "data"

    judge_task = make_task("evaluator_frame", cfg, Layout(root, data))
    torch.manual_seed(0)
    judge = judge_task.build_model()
    _train(judge_task, judge, steps=120, batch=32, lr=2e-3)
    judge_path = _save(judge_task, judge, root / "models" / "evaluators" / "moving_digits" / "frame.pt")

    tok_task = make_task("tokenizer", cfg, Layout(root, data))
    tok_task.check_data()
    torch.manual_seed(0)
    tokenizer = tok_task.build_model()
    _train(tok_task, tokenizer, steps=300, batch=16, lr=1e-3)
    _save(tok_task, tokenizer, root / "models" / "tokenizer" / "moving_digits" / "tokenizer.pt")

    task = make_task("usam", cfg, Layout(root, data))
    task.check_data()
    torch.manual_seed(0)
    model = task.build_model()
    _train(task, model, steps=400, batch=cfg.train.batch_size, lr=cfg.train.lr)
    weights = _save(task, model, root / "usam.pt")

    sampler = Sampler.load(weights, None, root)
    per = 8  # 80 samples: under chance (10%) P(>= 35% right) is about 1e-9; 40 left the figure +-8% to the CPU
    classes = torch.arange(10).repeat_interleave(per)
    cond = sampler.model.null_condition(len(classes), torch.device("cpu"))
    cond["class"] = classes
    videos = sampler.sample(cond, len(classes), cfg.model.sampling, seed=0)
    assert videos.shape == (80, 3, 4, 32, 32)
    predicted = classify_frames(videos, judge_path, None, sampler.meta["normalize"])
    accuracy = float((predicted == classes).float().mean())
    # the same judge on unconditional samples: the class must come from the condition, not from luck
    null = sampler.model.null_condition(len(classes), torch.device("cpu"))
    unconditional = classify_frames(sampler.sample(null, len(classes), cfg.model.sampling, seed=0), judge_path, None,
                                    sampler.meta["normalize"])
    baseline = float((unconditional == classes).float().mean())
    print(f"samples recognised as their class: {accuracy:.0%}; unconditional samples matching by luck: {baseline:.0%}")
    assert accuracy >= 0.35, f"samples recognised as their class {accuracy:.0%} (chance 10%)"
    assert accuracy >= baseline + 0.2, (accuracy, baseline)
