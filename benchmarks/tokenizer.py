#!/usr/bin/env python
"""Tokenizer quality against CPU training time, and encode/decode throughput, on this machine.

Trains the default tokenizer config (``tokenizer`` in params.yaml, or with ``--set`` overrides)
on moving digits with the harness's own pieces (the task's loss, AdamW parameter groups, the
schedule, clipping, autocast, seeded DataLoader) in this process, and measures:

  1. reconstruction PSNR (and SSIM) on the test split at every ``--eval-every`` seconds of
     training, up to ``--minutes`` (goal: >= 25 dB within 5 minutes); evaluation time is
     excluded from the training clock, data loading is included;
  2. encode and decode throughput (videos/s and tokens/s) of the trained model, fp32 and bf16
     side by side, batch ``--batch`` (median of repeats, after a warm-up).

It needs the pipeline's prepared data and frame evaluator (the perceptual loss):
run ``dvc repro evaluators@moving_digits`` first. Prints a table, writes JSON to ``--out``,
and asserts nothing about speed. Example:

    .venv/bin/python benchmarks/tokenizer.py --minutes 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GOAL_DB, GOAL_MINUTES = 25.0, 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=GOAL_MINUTES, help="training budget (CPU wall-clock minutes)")
    p.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between test evaluations")
    p.add_argument("--dataset", default="moving_digits", choices=("moving_digits", "bouncing_shapes"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. tokenizer.train.lr=5e-4")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: tokenizer.train.runtime.threads_per_worker)")
    p.add_argument("--batch", type=int, default=32, help="batch of the throughput measurements")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per throughput figure (median)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tokenizer.json")
    return p.parse_args(argv)


def train_against_time(task, args, log) -> tuple[torch.nn.Module, list[dict]]:
    from torch.utils.data import DataLoader

    from usam.seeding import dataloader_generator, seed_everything, worker_init_fn
    from usam.train.loop import param_groups
    from usam.train.schedule import build_scheduler

    cfg, tcfg = task.cfg, task.train_cfg
    seed_everything(cfg.seed, deterministic=tcfg.runtime.deterministic)
    model = task.build_model()
    train = task.dataset("train", train=True)
    test = DataLoader(task.dataset("test", train=False), batch_size=64, generator=dataloader_generator(cfg.seed, "test"))
    steps_per_epoch = len(train) // (tcfg.batch_size * tcfg.grad_accum)
    total = steps_per_epoch * tcfg.epochs if tcfg.max_steps is None else min(tcfg.max_steps, steps_per_epoch * tcfg.epochs)
    optimizer = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(0.9, 0.95))
    scheduler = build_scheduler(optimizer, tcfg, total)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tcfg.precision)
    device = torch.device("cpu")
    budget, clock, step, epoch, next_eval, curve = args.minutes * 60, 0.0, 0, 0, args.eval_every, []

    def evaluate() -> None:
        scores = task.summarize(task.evaluate(model, test, device))
        curve.append({"train_minutes": clock / 60, "step": step, "epoch": epoch,
                      "psnr": scores["val_psnr"], "ssim": scores["val_ssim"]})
        log(f"  {clock / 60:5.2f} min  step {step:4d}  test PSNR {scores['val_psnr']:6.2f} dB  SSIM {scores['val_ssim']:.3f}")
        model.train()

    model.train()
    while step < total and clock < budget:
        train.set_epoch(epoch)
        loader = DataLoader(train, batch_size=tcfg.batch_size, shuffle=True, drop_last=True, num_workers=0,
                            worker_init_fn=worker_init_fn, generator=dataloader_generator(cfg.seed, "train", epoch, 0))
        start = time.perf_counter()
        for batch in loader:
            with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
                loss, _ = task.loss(model, batch, device, step)
            loss.backward()
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            now = time.perf_counter()
            clock += now - start
            if clock >= next_eval or step >= total or clock >= budget:
                evaluate()
                next_eval = clock + args.eval_every
            start = time.perf_counter()
            if step >= total or clock >= budget:
                break
        epoch += 1
    return model.eval(), curve


def throughput(model, video: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per batch of encode and of decode, fp32 and bf16."""
    out = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else (lambda: torch.autocast("cpu", enabled=False))
        with ctx():
            bits, schedule = model.encode(video)  # warm-up
            model.decode(bits, schedule, video.shape[2])
            enc, dec = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                bits, schedule = model.encode(video)
                t1 = time.perf_counter()
                model.decode(bits, schedule, video.shape[2])
                t2 = time.perf_counter()
                enc.append(t1 - t0)
                dec.append(t2 - t1)
        tokens = sum(s.tokens for s in schedule.stages)
        for name, times in (("encode", enc), ("decode", dec)):
            seconds = statistics.median(times)
            out[f"{name}_{precision}_videos_per_s"] = video.shape[0] / seconds
            out[f"{name}_{precision}_tokens_per_s"] = video.shape[0] * tokens / seconds
        out["tokens_per_video"] = tokens
    return out


def main(argv: list[str] | None = None) -> int:
    from usam.config import compose
    from usam.errors import UsamError
    from usam.models import parameter_count
    from usam.train.tasks import make_task
    from usam.train.trainer import with_dataset

    args = parse_args(argv)
    cfg = with_dataset(compose(args.set), args.dataset)
    task = make_task("tokenizer", cfg, REPO / cfg.data.root, REPO)
    try:
        task.check_data()
    except UsamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or task.train_cfg.runtime.threads_per_worker)
    log = lambda text: print(text, flush=True)  # noqa: E731
    log(f"training the tokenizer on {args.dataset} for up to {args.minutes:g} min "
        f"({torch.get_num_threads()} threads, {task.train_cfg.precision}, perceptual: {task.perceptual_label})")
    model, curve = train_against_time(task, args, log)
    test = task.dataset("test", train=False)
    video = torch.stack([test[i]["video"] for i in range(min(args.batch, len(test)))]).transpose(1, 2)
    speed = throughput(model, video, args.repeats)
    reached = next((p["train_minutes"] for p in curve if p["psnr"] >= GOAL_DB), None)
    final = curve[-1]
    results = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "dataset": args.dataset, "overrides": args.set, "parameters": parameter_count(model),
        "perceptual": task.perceptual_label, "curve": curve, "final_psnr": final["psnr"],
        "final_minutes": final["train_minutes"], "minutes_to_goal": reached,
        "goal": f">= {GOAL_DB:g} dB within {GOAL_MINUTES:g} min", "throughput": speed,
    }
    log("")
    log(f"final test PSNR            {final['psnr']:.2f} dB after {final['train_minutes']:.2f} min ({final['step']} steps)")
    goal = f"reached at {reached:.2f} min" if reached is not None else "not reached"
    log(f"goal {results['goal']:<21} {goal}")
    log(f"parameters                 {results['parameters']:,}")
    log(f"tokens per video           {speed['tokens_per_video']}")
    for name in ("encode", "decode"):
        log(f"{name:<6} videos/s            fp32 {speed[f'{name}_fp32_videos_per_s']:8.1f}   "
            f"bf16 {speed[f'{name}_bf16_videos_per_s']:8.1f}   (bf16/fp32 "
            f"{speed[f'{name}_bf16_videos_per_s'] / speed[f'{name}_fp32_videos_per_s']:.2f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
