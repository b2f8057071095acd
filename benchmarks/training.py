#!/usr/bin/env python
"""Training throughput and FLOP utilization of USAM and the tokenizer, default and wider, fp32 and bf16.

Builds moving digits (the default dataset) in a throwaway project with a random-weight frame evaluator (the
tokenizer's perceptual loss) and a random-weight default tokenizer (USAM's frozen encoder): speed does not
depend on the weights. Then, side by side in one run, at the recipe's thread count:

  1. the fp32 and bf16 matmul peaks (GFLOP/s of an N x N x N torch.matmul), measured at the start and after
     each model; MFU divides by the best rate seen (a peak measured while another process held a core would
     inflate every MFU);
  2. FLOPs per training sample, two ways: FlopCounterMode on one forward + backward of the task's loss (with
     usam.models.flops.flop_counter's formula for the CPU attention kernel, which stock FlopCounterMode counts
     as 0; the stock count is kept too), and the analytical count of usam.models.flops (USAM: 6 x linear weights x tokens + 12 x depth x tokens^2 x
     width; the tokenizer: every conv layer's multiply-adds x 2 x 3, fewer passes where a gradient is not
     needed, perceptual network included); their ratio;
  3. steady-state samples/s of the real training step (usam.train.loop.Trainer: the task's loss, AdamW over
     the task's parameter groups, the schedule, clipping, autocast, the seeded DataLoader over the train
     split; data loading is on the clock) for each model x size (default, width x --width-factor) x
     precision (fp32, bf16 autocast); MFU = FlopCounterMode FLOPs/sample x samples/s / the matmul peak of
     the run's dtype (and, in the JSON, against the other peak too);
  4. the switches that change numerics, at the default size in the recipe's own precision, against the
     recipe timed again just before them: train.runtime.optimizer_impl=foreach / fused, and for the tokenizer
     runtime.channels_last; the loop as it ran before deterministic mode stopped NaN-filling new tensors (same
     weights); the loss of bf16 against fp32's at the same step (same seed, same batches);
  5. with --profile, a torch.profiler table of the default recipe's step per model (CPU time by op, and the
     share of the step spent waiting for data), written next to the JSON.

Prints a table and writes JSON (a "report" list of figures against their limits); asserts nothing about speed.

    .venv/bin/python benchmarks/training.py                    # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/training.py --models usam --sizes default --profile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "benchmarks"):  # run as a plain script from anywhere; shares train_throughput's tools
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from train_throughput import CpuSampler, describe_usage, matmul_peak  # noqa: E402

SECTION = {"usam": "train", "tokenizer": "tokenizer.train"}
WIDTH_KEY = {"usam": "model.width", "tokenizer": "tokenizer.arch.base_channels"}
COMMAND = "python benchmarks/training.py"
LOSS_TAIL = 5  # steps whose mean loss compares bf16 with fp32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["usam", "tokenizer"], choices=("usam", "tokenizer"))
    p.add_argument("--sizes", nargs="+", default=["default", "wide"], choices=("default", "wide"))
    p.add_argument("--width-factor", type=int, default=2, help="the wide size: model.width / tokenizer base channels x this")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run, after warm-up")
    p.add_argument("--warmup", type=int, default=2, help="optimizer steps left out of every rate (>= 1)")
    p.add_argument("--run-seconds", type=float, default=12.0,
                   help="a run stops timing after this many seconds of timed steps (at least 2 steps), so the slow "
                        "tokenizer runs fit the budget")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of every run and peak (default: the recipe's train.runtime.threads_per_worker)")
    p.add_argument("--no-switches", action="store_true", help="skip 4 (optimizer_impl / channels_last side by side)")
    p.add_argument("--switch-repeats", type=int, default=2,
                   help="rounds of 4: each a (recipe, switch) pair per switch; the figure is the median pair ratio")
    p.add_argument("--profile", action="store_true", help="also profile the default recipe's step (5)")
    p.add_argument("--profile-steps", type=int, default=4, help="steps under the profiler, after 2 unprofiled ones")
    p.add_argument("--matmul-size", type=int, default=1024, help="N of the N x N x N matmul of the peak")
    p.add_argument("--matmul-repeats", type=int, default=7, help="timed matmuls per dtype (median taken), after 1 warm-up")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    p.add_argument("--keep-temp", action="store_true", help="keep the throwaway project folder")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "training.json")
    args = p.parse_args(argv)
    if min(args.steps, args.warmup, args.width_factor, args.switch_repeats) < 1:
        p.error("--steps, --warmup, --width-factor and --switch-repeats must be >= 1")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- the throwaway project


def build_project(root: Path, overrides: list[str]) -> None:
    """Moving digits (train/val/test), a random frame evaluator and a random default tokenizer, saved where
    the layout keeps them and the way their stages save them."""
    from usam.artifacts.layout import Layout
    from usam.config import compose
    from usam.data import build_dataset, preprocess_dataset
    from usam.models.evaluators import FrameClassifier
    from usam.train.checkpoint import atomic_torch_save
    from usam.train.tasks import make_task

    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(overrides)
    layout = Layout.of(cfg, root)
    name = cfg.data.name
    build_dataset(cfg, name, layout.raw(name))
    preprocess_dataset(cfg, layout.raw(name), layout.prepared(name))
    torch.manual_seed(0)
    frame = layout.evaluator(name, "frame")
    frame.parent.mkdir(parents=True, exist_ok=True)
    ecfg = cfg.evaluator.frame
    atomic_torch_save({"model": FrameClassifier(num_classes=10, width=ecfg.width, stages=ecfg.stages).state_dict(),
                       "task": "evaluator_frame"}, frame)
    task = make_task("tokenizer", cfg, layout)
    model = task.build_model()
    path = layout.tokenizer(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"model": model.state_dict(), "progress": {}, "task": "tokenizer", **task.export_meta()}, path)


# ----------------------------------------------------------------------------- one recipe


class StepClock:
    """Wall time of every optimizer step (data loading included) and of the data wait before it, and the loss."""

    def __init__(self, trainer, warmup: int, budget_s: float):
        from usam.train.hooks import HookBase, StopTraining

        self.marks: list[tuple[float, float, float]] = []  # (step start: batch in hand, step end, loss)
        self.t_end = time.perf_counter()
        self.t_start = self.t_end
        run_step = trainer.run_step

        def timed(batch):
            self.t_start = time.perf_counter()
            return run_step(batch)

        trainer.run_step = timed
        clock = self

        class _Hook(HookBase):
            def after_step(self) -> None:
                now = time.perf_counter()
                clock.marks.append((clock.t_start - clock.t_end, now - clock.t_end, float(self.trainer.parts["loss"])))
                clock.t_end = now
                timed = clock.marks[warmup:]
                if len(timed) >= 2 and sum(m[1] for m in timed) > budget_s:
                    raise StopTraining

        trainer.hooks.append(_Hook())
        trainer.hooks[-1].trainer = trainer


def make_trainer(cfg, task_name: str, root: Path, steps: int, threads: int):
    """The harness's Trainer for ``task_name`` as ``usam.train.loop.train_worker`` builds it (seeded model,
    the recipe's memory format and optimizer, data, schedule), in this process, with no hooks but the clock."""
    from usam.artifacts.layout import Layout
    from usam.seeding import derive_seed, seed_everything
    from usam.train.loop import Progress, Trainer, apply_memory_format, build_optimizer
    from usam.train.sampler import ShardedEpochSampler
    from usam.train.schedule import build_scheduler
    from usam.train.session import LocalSession
    from usam.train.tasks import make_task

    task = make_task(task_name, cfg, Layout.of(cfg, root))
    task.check_data()
    tcfg = task.train_cfg
    torch.set_num_threads(threads)
    seed_everything(cfg.seed, deterministic=tcfg.runtime.deterministic)
    model = task.build_model()
    seed_everything(derive_seed(cfg.seed, "rank", 0), deterministic=tcfg.runtime.deterministic)
    model = apply_memory_format(model, tcfg.runtime.channels_last)
    optimizer = build_optimizer(task, model, tcfg)
    device = torch.device("cpu")
    train_ds, _ = task.datasets(device)
    sampler = ShardedEpochSampler(len(train_ds), rank=0, world=1, seed=cfg.seed)
    scheduler = build_scheduler(optimizer, tcfg, steps)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    session = LocalSession(device, root / "outputs" / "bench")
    trainer = Trainer(task, session.prepare(model), optimizer, scheduler, scaler, train_ds, sampler, session,
                      Progress(), steps, cfg.seed, [])
    trainer.flops_per_micro = 1  # the loop's own FlopCounterMode pass is left out of the timing
    return task, trainer


def time_recipe(cfg, task_name: str, root: Path, warmup: int, steps: int, threads: int, budget_s: float,
                nan_fill: bool = False) -> dict:
    """Steady samples/s of the recipe's training steps after ``warmup`` ones, the data wait's share, the losses.
    ``nan_fill``: with torch's NaN fill of new tensors in deterministic mode, as the loop ran before it was
    turned off (same weights, slower)."""
    _, trainer = make_trainer(cfg, task_name, root, warmup + steps, threads)
    clock = StepClock(trainer, warmup, budget_s)
    wall0 = time.time()
    torch.utils.deterministic.fill_uninitialized_memory = nan_fill and trainer.cfg.runtime.deterministic
    try:
        trainer.train()
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
    kept = clock.marks[warmup:]
    seconds = sum(m[1] for m in kept)
    batch = trainer.cfg.batch_size * trainer.cfg.grad_accum
    rates = [batch / m[1] for m in kept]
    return {"samples_per_s": batch * len(kept) / seconds, "steps": len(kept), "seconds": seconds,
            "step_cv": statistics.pstdev(rates) / statistics.fmean(rates) if len(rates) > 1 else 0.0,
            "data_share": sum(m[0] for m in kept) / seconds, "losses": [m[2] for m in clock.marks],
            "batch": batch,
            "threads": threads, "window": (wall0 + sum(m[1] for m in clock.marks[:warmup]), time.time())}


def count_flops(cfg, task_name: str, root: Path, threads: int) -> dict:
    """FLOPs per sample of one forward + backward of the task's loss: FlopCounterMode, and usam.models.flops."""
    from torch.utils.flop_counter import FlopCounterMode

    from usam.models import flops

    task, trainer = make_trainer(cfg, task_name, root, 1, threads)
    model = trainer.model
    batch = next(iter(trainer._loader()))
    device = torch.device("cpu")
    size = trainer.cfg.batch_size
    counts = {}
    for name, counter in (("stock", FlopCounterMode(display=False)), ("completed", flops.flop_counter())):
        with counter:
            loss, _ = task.loss(model, batch, device)
            loss.backward()
        model.zero_grad(set_to_none=True)
        counts[name] = counter.get_total_flops() / size
    measured = counts["completed"]
    if task_name == "usam":
        formula = flops.usam_train_flops(model)
        analytic = formula["total"]
        how = "6 x linear weights x tokens + 14 (12 on the math path: attention dropout) x depth x tokens^2 x width"
        detail = {k: formula[k] for k in ("linear_weights", "tokens", "dense", "attention")}
    else:
        modules = [model] + ([task.perceptual(device)] if task.perceptual(device) is not None else [])
        formula = flops.layer_train_flops(lambda: task.loss(model, batch, device)[0], modules)
        analytic = formula["total"] / size
        how = ("per conv layer: multiply-adds x 2 x 3 (x 2 x 2 with one gradient fewer: the first layer, the "
               "frozen perceptual net on the reconstruction; x 2 forward-only: it on the target)")
        detail = {k: v / size for k, v in formula["macs"].items()}
    params = sum(p.numel() for p in model.parameters())
    return {"flopcounter": measured, "flopcounter_stock": counts["stock"], "analytic": analytic, "analytic_over_flopcounter": analytic / measured,
            "analytic_formula": how, "analytic_detail": detail, "parameters": params}


def profile_recipe(cfg, task_name: str, root: Path, steps: int, threads: int, out: Path) -> dict:
    """torch.profiler over ``steps`` optimizer steps of the recipe (after 2 unprofiled ones): the op table
    (written to ``out``) and the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    _, trainer = make_trainer(cfg, task_name, root, steps + 2, threads)
    run_step = trainer.run_step
    state = {"n": 0, "prof": None}

    def step(batch):
        with record_function("run_step"):
            return run_step(batch)

    trainer.run_step = step
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False,
                   schedule=torch.profiler.schedule(wait=0, warmup=2, active=steps, repeat=1))

    from usam.train.hooks import HookBase

    class _Advance(HookBase):
        def after_step(self) -> None:
            state["n"] += 1
            prof.step()

    hook = _Advance()
    hook.trainer = trainer
    trainer.hooks.append(hook)
    with prof:
        trainer.train()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    step_total = next((e.cpu_time_total for e in events if e.key == "run_step"), 0.0)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"table": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
            "steps": steps, "self_cpu_ms_total": total / 1e3, "run_step_cpu_ms": step_total / 1e3,
            "outside_run_step_share": 1 - step_total / total if total else None,
            "top_self_cpu": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count,
                              "share": e.self_cpu_time_total / total} for e in top]}


# ----------------------------------------------------------------------------- the table


def fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def print_report(rows: list[dict]) -> None:
    headers = ("figure", "value", "unit", "limit", "ratio", "limit is")
    cells = [(r["figure"], fmt(r["value"]), r["unit"], fmt(r["limit"]) if r["limit"] is not None else "",
              f"{r['ratio']:.3f}" if r["ratio"] is not None else "", r["limit_is"]) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join((v.rjust(w) if i in (1, 3, 4) else v.ljust(w)) for i, (v, w) in enumerate(zip(c, widths))))


def row(figure: str, value: float, unit: str, limit: float | None, limit_is: str, command: str) -> dict:
    return {"figure": figure, "value": value, "unit": unit, "limit": limit, "limit_is": limit_is,
            "ratio": value / limit if limit else None, "command": command}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from usam.config import compose

    started = time.perf_counter()
    base = compose(args.set)
    threads = args.threads or base.train.runtime.threads_per_worker
    batches = [base.train.batch_size, base.tokenizer.train.batch_size]
    videos = (args.warmup + args.steps) * max(batches)  # one epoch holds every run: no epoch boundary inside
    data = [f"data.num_videos.train={videos}", "data.num_videos.val=16", "data.num_videos.test=16"]
    overrides = [*data, *args.set]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "python": platform.python_version(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        from usam.track.provenance import hardware

        machine["cpu"] = hardware().get("cpu_model") or machine["cpu"]
    except Exception:
        pass
    log(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['cpu_capability']}, torch {torch.__version__}, "
        f"load average {machine['loadavg_at_start']}; {threads} thread(s) per run")
    try:
        sampler = CpuSampler().start()
    except Exception as exc:
        log(f"no per-process CPU breakdown ({type(exc).__name__}: {exc})")
        sampler = None
    root = Path(tempfile.mkdtemp(prefix="usam-train-bench-"))
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    results: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "threads": threads, "videos": videos, "machine": machine, "command": command}
    runs: dict[str, dict] = {}
    flop_counts: dict[str, dict] = {}
    profiles: dict[str, dict] = {}
    try:
        t = time.perf_counter()
        build_project(root, overrides)
        log(f"project in {root}: {videos} train videos, random frame evaluator and tokenizer "
            f"({time.perf_counter() - t:.1f}s)")

        rounds: dict[str, list[dict]] = {"fp32": [], "bf16": []}

        def measure_peaks(when: str) -> None:
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                median, best = matmul_peak(args.matmul_size, dtype, threads, args.matmul_repeats)
                rounds[name].append({"when": when, "median": median, "best": best})
                log(f"matmul {args.matmul_size}^3 {name} x{threads} ({when}): median {median:.1f} GFLOP/s "
                    f"(best {best:.1f})")

        measure_peaks("start")

        def config(model: str, size: str, *extra: str):
            width = [] if size == "default" else [
                f"{WIDTH_KEY[model]}={getattr_path(base, WIDTH_KEY[model]) * args.width_factor}"]
            return compose([*overrides, *width, *extra])

        for model in args.models:
            sec = SECTION[model]
            recipe = getattr_path(base, sec).precision
            for size in args.sizes:
                key = f"{model}_{size}"
                flop_counts[key] = f = count_flops(config(model, size), model, root, threads)
                log(f"{key}: {f['parameters']:,} parameters; FLOPs/sample FlopCounterMode {f['flopcounter'] / 1e9:.3f} G "
                    f"(stock, without CPU attention: {f['flopcounter_stock'] / 1e9:.3f} G), "
                    f"analytic {f['analytic'] / 1e9:.3f} G (ratio {f['analytic_over_flopcounter']:.3f})")
                for precision in args.precisions:
                    name = f"{key}_{precision}"
                    r = time_recipe(config(model, size, f"{sec}.precision={precision}"), model, root, args.warmup,
                                    args.steps, threads, args.run_seconds)
                    achieved = f["flopcounter"] * r["samples_per_s"] / 1e9
                    r["achieved_gflops"] = achieved
                    r["precision"] = precision
                    runs[name] = r
                    log(f"{name}: {r['samples_per_s']:.1f} samples/s over {r['steps']} steps (cv {r['step_cv']:.2f}, "
                        f"data wait {100 * r['data_share']:.0f}%), {achieved:.1f} GFLOP/s; loss at step {len(r['losses'])} {r['losses'][-1]:.4f}")
            if not args.no_switches and "default" in args.sizes:
                # each switch right after the recipe timed again, in --switch-repeats rounds: neighbours in time
                # share the machine's load, and the median of the pairs' ratios is the figure
                recipe_cfg = [f"{sec}.precision={recipe}"]
                variants = [("nan_fill", [], True)]
                variants += [(sw.replace("=", "_"), [f"{sec}.runtime.{sw}"], False)
                             for sw in ("optimizer_impl=foreach", "optimizer_impl=fused")]
                if model == "tokenizer":
                    variants.append(("channels_last_true", [f"{sec}.runtime.channels_last=true"], False))
                for round_ in range(1, args.switch_repeats + 1):
                    for tag, extra, nan_fill in variants:
                        pair = []
                        for side, cfg_extra, fill in (("recipe", [], False), (tag, extra, nan_fill)):
                            name = f"{model}_default_{recipe}_{tag}#{round_}" + ("_recipe" if side == "recipe" else "")
                            r = time_recipe(config(model, "default", *recipe_cfg, *cfg_extra), model, root,
                                            args.warmup, args.steps, threads, args.run_seconds, nan_fill=fill)
                            r.update(pair_of=f"{model}:{tag}", side=side, round=round_,
                                     switch=extra[0] if extra else "NaN fill of new tensors (the loop before)")
                            runs[name] = r
                            pair.append(r)
                        log(f"{model} {tag} #{round_}: {pair[1]['samples_per_s']:.1f} vs the recipe's "
                            f"{pair[0]['samples_per_s']:.1f} samples/s ({pair[1]['samples_per_s'] / pair[0]['samples_per_s']:.3f}x); "
                            f"loss at step {len(pair[1]['losses'])} {pair[1]['losses'][-1]:.4f} vs "
                            f"{pair[0]['losses'][-1]:.4f}")
            measure_peaks(f"after {model}")
            if args.profile:
                out = args.out.with_name(f"{args.out.stem}_profile_{model}.txt")
                profiles[model] = profile_recipe(config(model, "default"), model, root, args.profile_steps, threads, out)
                top = ", ".join(f"{e['op']} {100 * e['share']:.0f}%" for e in profiles[model]["top_self_cpu"][:6])
                log(f"profile of {model} ({recipe}): {top}; outside run_step (data, loop) "
                    f"{100 * (profiles[model]['outside_run_step_share'] or 0):.0f}% -> {out}")
    finally:
        if sampler is not None:
            sampler.stop()
        if args.keep_temp:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    for name, r in runs.items():
        r["cpu"] = sampler.usage(*r.pop("window")) if sampler else None
        r.pop("window", None)

    # ---- MFU against the best matmul rate seen in the run: a peak measured while others held a core (a median
    # dragged down) would inflate every MFU; the best of all rounds is the least contended
    peaks = {name: {"best": max(r["best"] for r in rs), "rounds": rs} for name, rs in rounds.items()}
    for r in runs.values():
        if "achieved_gflops" in r:
            r["mfu_vs"] = {p: r["achieved_gflops"] / peaks[p]["best"] for p in peaks}
            r["mfu"] = r["mfu_vs"][r["precision"]]

    # ---- the report rows
    report = []
    for model in args.models:
        recipe = getattr_path(base, SECTION[model]).precision
        label = "USAM" if model == "usam" else "Tokenizer"
        for size in args.sizes:
            key = f"{model}_{size}"
            f = flop_counts[key]
            report.append(row(f"{label} {size} training FLOPs/sample (FlopCounterMode, CPU attention counted)",
                              f["flopcounter"], "FLOP", None, "", command))
            report.append(row(f"{label} {size} FLOPs/sample analytic / FlopCounterMode", f["analytic_over_flopcounter"],
                              "", 1.0, "equal counts", command))
            report.append(row(f"{label} {size} FLOPs/sample stock FlopCounterMode / completed", f["flopcounter_stock"]
                              / f["flopcounter"], "", 1.0, "nothing missed", command))
            for precision in args.precisions:
                r = runs[f"{key}_{precision}"]
                peak = peaks[precision]["best"]
                limit_is = (f"{precision} matmul peak {peak:.0f} GFLOP/s at {threads} threads, best of the run "
                            "(FLOPs: FlopCounterMode + CPU attention)")
                report.append(row(f"{label} {size} {precision} training samples/s", r["samples_per_s"], "samples/s",
                                  peak * 1e9 / f["flopcounter"], "peak-implied samples/s: " + limit_is, command))
                report.append(row(f"{label} {size} {precision} training MFU", r["mfu"], "", 1.0, limit_is, command))
            if {"fp32", "bf16"} <= set(args.precisions):
                fp, bf = runs[f"{key}_fp32"], runs[f"{key}_bf16"]
                report.append(row(f"{label} {size} bf16 / fp32 training speed", bf["samples_per_s"] / fp["samples_per_s"],
                                  "x", 1.0, "fp32 (no speed-up)", command))
                n = min(len(fp["losses"]), len(bf["losses"]))
                report.append(row(f"{label} {size} bf16 loss / fp32 loss at step {n}", loss_at(bf, n) / loss_at(fp, n),
                                  "", 1.0, f"fp32 loss {loss_at(fp, n):.4f} (mean of steps {max(n - LOSS_TAIL, 0) + 1}-{n}, "
                                  "same seed and batches)", command))
        pairs: dict[str, list[tuple[dict, dict]]] = {}
        for r in runs.values():
            if r.get("pair_of", "").startswith(f"{model}:") and r["side"] != "recipe":
                base_run = next(b for b in runs.values() if b.get("pair_of") == r["pair_of"]
                                and b["side"] == "recipe" and b["round"] == r["round"])
                pairs.setdefault(r["switch"], []).append((base_run, r))
        for switch, got in pairs.items():
            speed = statistics.median(v["samples_per_s"] / b["samples_per_s"] for b, v in got)
            b, v = got[0]
            n = min(len(b["losses"]), len(v["losses"]))
            other = max((x["cpu"] or {}).get("other_processes_cores", 0.0) for pair in got for x in pair)
            report.append(row(f"{label} default {recipe} speed with {switch}", speed, "x", 1.0,
                              f"the recipe timed just before (median of {len(got)} pairs; others used up to "
                              f"{other:.2f} cores)", command))
            report.append(row(f"{label} default {recipe} loss with {switch} / recipe's, step {n}",
                              loss_at(v, n) / loss_at(b, n), "", 1.0, f"the recipe's loss {loss_at(b, n):.4f}", command))

    results.update(matmul_peak_gflops=peaks, flops_per_sample=flop_counts, runs=runs, profiles=profiles,
                   report=report,
                   mfu_flops="flopcounter: FlopCounterMode + the CPU attention kernel's formula (usam.models.flops.flop_counter)",
                   total_seconds=time.perf_counter() - started)
    results["method"] = (
        "Rates: samples / seconds over the optimizer steps after --warmup, of usam.train.loop.Trainer in this "
        "process (data loading on the clock; no validation, logging or checkpoints). MFU uses the FlopCounterMode "
        "count completed with the CPU attention kernel's formula (usam.models.flops.flop_counter; stock "
        "FlopCounterMode counts it as 0: flopcounter_stock) (forward + backward of the task's loss on one batch, "
        "matmuls, convolutions and attention; the "
        "frozen perceptual network's passes included) x samples/s / the best matmul rate of the run's dtype at "
        "the same thread count; the analytical count checks it (analytic_over_flopcounter). Random weights.")
    print()
    print(f"Training throughput, {threads} thread(s), {args.warmup} warm-up + up to {args.steps} timed steps per run. "
          "MFU = FlopCounterMode FLOPs/sample (CPU attention counted) x samples/s / the best matmul rate of the run's "
          "dtype.")
    if sampler is not None:
        print("\nCPU use per run (cores; 'other processes' are not this benchmark's and skew it):")
        for name, r in runs.items():
            print(f"  {name}: {describe_usage(r['cpu'])}")
    print()
    print_report(report)
    busy = {n: r["cpu"]["other_processes_cores"] for n, r in runs.items()
            if r.get("cpu") and r["cpu"]["other_processes_cores"] > 0.25}
    if busy:
        worst = max(busy, key=busy.get)
        print(f"\nWARNING: other processes used more than 0.25 of the {os.cpu_count()} cores during {len(busy)} of "
              f"{len(runs)} runs (worst: {busy[worst]:.2f} in {worst}); the rates and ratios are skewed: re-run on a "
              "quiet machine before drawing conclusions")
        results["contention_warning"] = busy
    print(f"\ntotal {results['total_seconds']:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


def loss_at(run: dict, n: int) -> float:
    """Mean training loss of steps n - LOSS_TAIL + 1 .. n of a run."""
    return statistics.fmean(run["losses"][max(n - LOSS_TAIL, 0):n])


def getattr_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


if __name__ == "__main__":
    sys.exit(main())
