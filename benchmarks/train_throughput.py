#!/usr/bin/env python
"""Training throughput on this machine: matmul peak, plain PyTorch loop, MFU, bf16, Ray Train overhead and scaling.

Builds a small dataset in a throwaway project folder (temp dir with an empty dvc.yaml;
the MLflow sqlite store and the Ray run folders land there too), then measures in one run:

  1. matmul peak: fp32 and bf16 GFLOP/s of a timed square torch.matmul (median of repeats)
     at the thread count the plain loop uses (and at 1 and 2 threads, for the Ray runs' MFU);
  2. the plain PyTorch loop of the task (same data, DataLoader, model, AdamW, schedule and
     grad clipping as usam.train.loop) in samples/s after warm-up; model FLOPs per sample
     from FlopCounterMode on one forward+backward; MFU = achieved FLOP/s / measured peak;
  3. bf16 autocast vs fp32 in that plain loop;
  4. Ray Train (usam.train.fit) with 1 worker x THREADS threads vs the plain loop at THREADS
     threads: overhead = plain samples/s / Ray samples/s (target <= 1.10); the plain baseline
     here is the mean of the plain loop run before ray.init and again after ray.shutdown;
  5. Ray Train 2 workers x 1 thread vs 1 worker x 2 threads: scaling = samples/s(2x1) /
     samples/s(1x2) (target >= 0.85).

Steady-state rates, plain and Ray alike, are total samples / total time over the steps after
the first WARMUP ones (and excluding the first step of any later epoch, which pays for the
previous epoch's validation + checkpoint in Ray). For Ray they come from the MLflow history
of `train/samples_per_s`, which rank 0 logs every step here (train.runtime.log_every=1): each entry is
one step's samples over the time since the previous entry, so Ray start-up, worker-group
creation, validation, checkpointing and export are all outside it. The fit wall-clock
(including all of those) is printed separately. A background sampler (psutil) also reports,
for each steady window, the cores used by each of this benchmark's processes (driver, Ray
workers, Ray daemons) and by other processes: on a shared machine those skew every figure.

Prints figures and writes them as JSON; asserts nothing about speed. Example:

    .venv/bin/python benchmarks/train_throughput.py --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from usam.seeding import dataloader_generator  # noqa: E402

OVERHEAD_TARGET = 1.10  # plain / Ray samples/s, at most
SCALING_TARGET = 0.85  # samples/s(2 workers x 1 thread) / samples/s(1 worker x 2 threads), at least


# ----------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Everything runs on CPU; with the defaults the whole benchmark takes about 2-3 minutes on 2 cores "
               "(each extra --repeats round about a minute more).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default="evaluator_clip", choices=("evaluator_clip", "evaluator_frame"),
                   help="training task to benchmark (usam.train.tasks)")
    p.add_argument("--dataset", default="bouncing_shapes", choices=("bouncing_shapes", "moving_digits"),
                   help="synthetic dataset built into the temp project")
    p.add_argument("--videos", type=int, default=None,
                   help="train videos to generate; default: just enough that warm-up + timed steps fit in one "
                        "epoch even with 2 workers ((warmup+steps) x batch-size x 2), so no epoch boundary "
                        "(validation + checkpoint) falls inside a run")
    p.add_argument("--batch-size", type=int, default=16, help="samples per step on each worker (train.batch_size)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per measurement, after warm-up")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps run first and left out of every rate (>= 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the plain loop and the matmul peak; Ray's overhead run uses 1 worker "
                        "with this many threads (and CPUs)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="precision of the plain baseline and of the Ray runs (the bf16-vs-fp32 ratio always runs both)")
    p.add_argument("--matmul-size", type=int, default=2048, help="N of the N x N x N matmul used for the peak")
    p.add_argument("--matmul-repeats", type=int, default=5, help="timed matmuls per dtype (median taken), after 1 warm-up")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of the Ray measurements (each round: Ray 1 worker, Ray 2x1, Ray 1x2); "
                        "the table shows medians over rounds. Each round costs about a minute, mostly Ray start-up")
    p.add_argument("--ray-cpus", type=int, default=2, help="num_cpus of the local Ray instance started once for all runs")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Train measurements (4 and 5)")
    p.add_argument("--ray-logs", action="store_true", help="forward the Ray workers' output (a progress line per step)")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp project folder (data, mlflow.db, Ray runs)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_throughput.json",
                   help="JSON file for the results table (its folder is created)")
    args = p.parse_args(argv)
    if min(args.warmup, args.steps, args.batch_size, args.threads, args.repeats) < 1:
        p.error("--warmup, --steps, --batch-size, --threads and --repeats must be >= 1")
    return args


# ----------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CpuSampler:
    """Per-process CPU time, sampled in a background thread (psutil), to tell where the cores went in a window.

    Processes are split into this benchmark's own (the driver and its descendants: Ray's daemons and
    workers) and everyone else's (other users' tests on a shared machine skew every figure).
    """

    def __init__(self, interval: float = 0.5):
        import threading

        import psutil

        self.psutil, self.interval = psutil, interval
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    @staticmethod
    def _label(cmdline: list[str], name: str) -> str:
        if not cmdline:
            return name or "?"
        head = cmdline[0]
        if head.startswith("ray::"):
            return head.split(".")[0].split()[0]  # ray::RayTrainWorker, ray::TrainController, ray::IDLE
        for arg in cmdline[1:3]:
            if arg.endswith(".py"):
                return Path(arg).name  # ray's python daemons: log_monitor.py, dashboard.py, ...
        return Path(head).name

    def _snapshot(self) -> tuple[float, dict]:
        psutil = self.psutil
        me = psutil.Process()
        try:
            ours = {me.pid} | {c.pid for c in me.children(recursive=True)}
        except psutil.Error:
            ours = {me.pid}
        procs = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
            info = proc.info
            times = info.get("cpu_times")
            if times is None:
                continue
            label = "driver" if info["pid"] == me.pid else self._label(info.get("cmdline") or [], info.get("name") or "")
            procs[info["pid"]] = (info["pid"] in ours, label, times.user + times.system)
        return time.time(), procs

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._snapshot())
            except Exception:
                pass
            self._stop.wait(self.interval)

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def usage(self, t0: float, t1: float) -> dict | None:
        """Cores used per own-process label, and by all other processes, between wall times t0 and t1.

        Approximate: sampled every ``interval`` seconds; processes that ended inside the window are missed."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:  # a window shorter than the sampling interval: widen to the samples around it
            before = [s for s in self.samples if s[0] <= t0][-1:]
            after = [s for s in self.samples if s[0] >= t1][:1]
            inside = before + inside + after
        if len(inside) < 2:
            return None
        (ta, a), (tb, b) = inside[0], inside[-1]
        span = tb - ta
        ours: dict[str, float] = {}
        others = 0.0
        for pid, (own, label, cpu) in b.items():
            before = a.get(pid)  # matched by pid only: Ray workers change their title (ray::IDLE -> ray::...)
            delta = cpu - before[2] if before and before[2] <= cpu else cpu  # else: new (or a reused pid)
            if delta <= 0:
                continue
            if own:
                ours[label] = ours.get(label, 0.0) + delta / span
            else:
                others += delta / span
        ours = dict(sorted(((k, round(v, 3)) for k, v in ours.items() if v >= 0.005), key=lambda kv: -kv[1]))
        return {"window_s": round(span, 2), "own_cores": ours, "own_total": round(sum(ours.values()), 3),
                "other_processes_cores": round(others, 3)}


def describe_usage(u: dict | None) -> str:
    if not u:
        return "cpu use: n/a"
    own = ", ".join(f"{k} {v:.2f}" for k, v in list(u["own_cores"].items())[:6])
    return (f"cores used over {u['window_s']:.0f}s: this benchmark {u['own_total']:.2f} ({own}); "
            f"other processes {u['other_processes_cores']:.2f}")


def steady_rate(windows: list[tuple[int, float, float]], skip: set[int]) -> dict:
    """windows: (step, seconds, samples) per step; rate over the steps not in ``skip``."""
    kept = [(s, sec, n) for s, sec, n in windows if s not in skip]
    if not kept:
        return {"samples_per_s": float("nan"), "steps": 0, "seconds": 0.0, "step_cv": float("nan")}
    seconds = sum(sec for _, sec, _ in kept)
    rates = [n / sec for _, sec, n in kept if sec > 0]
    cv = statistics.pstdev(rates) / statistics.fmean(rates) if len(rates) > 1 else 0.0
    return {"samples_per_s": sum(n for _, _, n in kept) / seconds, "steps": len(kept), "seconds": seconds,
            "step_cv": cv}


def skipped_steps(warmup: int, total: int, steps_per_epoch: int) -> set[int]:
    """Warm-up steps, and the first step of every later epoch (it follows validation + checkpoint in Ray)."""
    skip = set(range(1, warmup + 1))
    skip |= {s for s in range(1, total + 1) if s > 1 and (s - 1) % steps_per_epoch == 0}
    return skip


def matmul_peak(n: int, dtype: torch.dtype, threads: int, repeats: int) -> tuple[float, float]:
    """GFLOP/s of an n x n x n torch.matmul after one warm-up: (median, best) over ``repeats``."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9, 2 * n**3 / min(times) / 1e9


def flops_per_sample(task, batch: dict) -> float:
    """FLOPs of one forward+backward (FlopCounterMode: matmuls and convolutions) / batch size."""
    from torch.utils.flop_counter import FlopCounterMode

    model = task.build_model()
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = task.loss(model, batch, torch.device("cpu"))
        loss.backward()
    return counter.get_total_flops() / len(batch["label"])


def plain_loop(task, cfg, *, threads: int, precision: str, warmup: int, steps: int) -> dict:
    """The harness's per-step work (usam.train.loop) without Ray: same sampler, DataLoader, AdamW param groups,
    schedule, autocast, finite check, grad clipping and EMA; per-step wall times (data loading included)."""
    from torch.utils.data import DataLoader

    from usam.seeding import seed_everything, worker_init_fn
    from usam.train.loop import param_groups
    from usam.train.sampler import ShardedEpochSampler
    from usam.train.schedule import build_scheduler

    tcfg = task.train_cfg
    torch.set_num_threads(threads)
    seed_everything(cfg.seed, deterministic=tcfg.runtime.deterministic)
    model = task.build_model()
    optimizer = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=(0.9, 0.95))
    total = warmup + steps
    scheduler = build_scheduler(optimizer, tcfg, total)
    ema = [p.detach().clone().float() for p in model.parameters()] if tcfg.ema_decay > 0 else None
    dtype = {"bf16": torch.bfloat16}.get(precision)
    device = torch.device("cpu")
    ds = task.dataset("train", train=True)
    sampler = ShardedEpochSampler(len(ds), rank=0, world=1, seed=cfg.seed)
    steps_per_epoch = sampler.per_rank // tcfg.batch_size
    windows, step, epoch, walls = [], 0, 0, {}
    t_prev = time.perf_counter()
    while step < total:
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=tcfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=tcfg.runtime.dataloader_workers, worker_init_fn=worker_init_fn,
                            generator=dataloader_generator(cfg.seed, "train", epoch))
        model.train()
        for batch in loader:
            with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
                loss, parts = task.loss(model, batch, device)
            if not bool(torch.isfinite(loss)):
                raise RuntimeError(f"non-finite loss at step {step + 1} of the plain loop")
            loss.backward()
            max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")
            float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                with torch.no_grad():
                    for e, p in zip(ema, model.parameters()):
                        e.mul_(tcfg.ema_decay).add_(p.detach().float(), alpha=1 - tcfg.ema_decay)
            step += 1
            now = time.perf_counter()
            windows.append((step, now - t_prev, float(tcfg.batch_size)))
            walls[step] = time.time()
            t_prev = now
            if step >= total:
                break
        epoch += 1
    out = steady_rate(windows, skipped_steps(warmup, total, steps_per_epoch))
    out.update(threads=threads, precision=precision, last_loss=parts.get("ce", float(loss.detach())),
               window=(walls[warmup], walls[total]))
    return out


def ray_run(cfg_overrides: list[str], task_name: str, root: Path, *, workers: int, threads: int,
            warmup: int, steps: int, batch_size: int, videos: int) -> dict:
    """usam.train.fit with ``workers`` x ``threads``; steady samples/s from the MLflow history of train/samples_per_s."""
    from usam.config import compose
    from usam.track import client_for
    from usam.train import fit

    total = warmup + steps
    cfg = compose([*cfg_overrides, f"evaluator.train.runtime.workers={workers}", f"evaluator.train.runtime.threads_per_worker={threads}",
                   f"evaluator.train.runtime.cpus_per_worker={threads}",
                   "evaluator.train.runtime.launcher=ray"])  # auto would train one worker in this process, without Ray
    t, t_wall = time.perf_counter(), time.time()
    result = fit(cfg, task_name, root=root, run_name=f"bench/{task_name}/{workers}x{threads}")
    wall = time.perf_counter() - t
    t_end = time.time()
    history = sorted(client_for(cfg, root).get_metric_history(result.run_id, "train/samples_per_s"),
                     key=lambda m: m.step)
    windows, prev = [], 0
    for m in history:
        n = (m.step - prev) * batch_size * workers
        windows.append((m.step, n / m.value if m.value > 0 else float("inf"), float(n)))
        prev = m.step
    steps_per_epoch = (videos // workers) // batch_size
    out = steady_rate(windows, skipped_steps(warmup, total, steps_per_epoch))
    stamps = {m.step: m.timestamp / 1000 for m in history}
    out.update(workers=workers, threads=threads, wall_s=wall, train_seconds=result.train_seconds,
               driver_side_s=wall - result.train_seconds, logged_steps=len(history),
               final_step=int(result.metrics.get("step", 0)), run_id=result.run_id,
               window=(stamps.get(warmup, 0.0), stamps.get(total, 0.0)))
    # everything in the fit wall-clock that is not a measured steady step: start-up, warm-up steps,
    # validation, checkpoint report, export, MLflow bookkeeping; split at the first and last logged step
    out["outside_steady_s"] = wall - out["seconds"]
    if history:
        out["until_first_step_s"] = history[0].timestamp / 1000 - t_wall  # MLflow run, worker group, step 1
        out["after_last_step_s"] = t_end - history[-1].timestamp / 1000  # validation, checkpoint, export
    return out


def fmt(value, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "%":
        return f"{value:.2f}"
    if unit in ("x", "ratio"):
        return f"{value:.3f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def print_table(rows: list[dict]) -> None:
    headers = ("name", "value", "unit", "target", "met?")
    cells = [(r["name"], fmt(r["value"], r["unit"]), r["unit"], r.get("target") or "",
              "" if r.get("met") is None else ("yes" if r["met"] else "NO")) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join((v.rjust(w) if i == 1 else v.ljust(w)) for i, (v, w) in enumerate(zip(c, widths))))


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from usam.artifacts.layout import Layout
    from usam.config import compose
    from usam.data import build_dataset, preprocess_dataset
    from usam.track import client_for
    from usam.train.tasks import make_task

    started = time.perf_counter()
    total_steps = args.warmup + args.steps
    needed = total_steps * args.batch_size * 2  # one epoch covers a whole run even with 2 workers
    videos = args.videos if args.videos is not None else needed
    if videos < args.batch_size * 2:
        print(f"error: --videos {videos} is fewer than 2 x batch-size", file=sys.stderr)
        return 2
    machine = {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        from usam.track.provenance import hardware

        machine["cpu"] = hardware().get("cpu_model") or machine["cpu"]
    except Exception:
        pass
    log(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {torch.__version__}, "
        f"load average {machine['loadavg_at_start']}")
    if videos < needed:
        log(f"note: {videos} videos < {needed}: epoch boundaries fall inside the runs; the first step of each "
            "later epoch is left out of the rates")
    try:
        sampler = CpuSampler().start()
    except Exception as exc:  # psutil missing: the figures still come, without the CPU breakdown
        log(f"no per-process CPU breakdown ({type(exc).__name__}: {exc})")
        sampler = None

    root = Path(tempfile.mkdtemp(prefix="usam-bench-"))
    (root / "dvc.yaml").write_text("stages: {}\n")
    overrides = [
        f"data.name={args.dataset}", f"data.num_videos.train={videos}", "data.num_videos.val=16",
        "data.num_videos.test=16", f"evaluator.train.batch_size={args.batch_size}", "evaluator.train.grad_accum=1",
        f"evaluator.train.precision={args.precision}", f"evaluator.train.max_steps={total_steps}",
        f"evaluator.train.epochs={max(1, math.ceil(total_steps / max(1, (videos // 2) // args.batch_size)) + 1)}",
        "evaluator.train.runtime.log_every=1", f"evaluator.train.runtime.checkpoint_every={10**9}", "evaluator.train.runtime.max_failures=0",
        "evaluator.train.runtime.dataloader_workers=0",
    ]
    results: dict = {"settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                  "videos": videos, "temp_project": str(root)},
                     "machine": machine, "command": [sys.executable, *sys.argv]}
    rows: list[dict] = []
    measured: dict[str, dict] = {}  # name -> result with a steady "window" (for the CPU breakdown)
    ray_started = False
    th, p = args.threads, args.precision
    try:
        # ---- data
        t = time.perf_counter()
        cfg = compose(overrides)
        raw, prepared = root / "data" / "raw" / args.dataset, root / "data" / "prepared" / args.dataset
        build_dataset(cfg, args.dataset, raw)
        preprocess_dataset(cfg, raw, prepared)
        log(f"dataset {args.dataset}: {videos} train videos in {root} ({time.perf_counter() - t:.1f}s)")
        task = make_task(args.task, cfg, Layout.of(cfg, root))
        task.check_data()
        sample_batch = next(iter(torch.utils.data.DataLoader(task.dataset("train", train=True), batch_size=args.batch_size,
                                                             generator=dataloader_generator(cfg.seed, "probe"))))
        log(f"task {args.task}: batch input {tuple(sample_batch['video'].shape)}")

        # ---- 1. matmul peak
        peaks, best = {}, {}
        for threads in sorted({1, 2, th}):
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peaks[(name, threads)], best[(name, threads)] = matmul_peak(
                    args.matmul_size, dtype, threads, args.matmul_repeats)
                log(f"matmul {args.matmul_size}^3 {name} x{threads} thread(s): median {peaks[(name, threads)]:.1f} "
                    f"GFLOP/s (best {best[(name, threads)]:.1f})")
        results["matmul_peak_gflops"] = {f"{n}_x{k}": {"median": v, "best": best[(n, k)]} for (n, k), v in peaks.items()}

        # ---- 2. + 3. plain loop, FLOPs, MFU, bf16 vs fp32 (before Ray starts)
        torch.set_num_threads(th)
        fps = flops_per_sample(task, sample_batch)
        results["flops_per_sample"] = fps
        log(f"model FLOPs per sample (forward+backward, FlopCounterMode): {fps / 1e6:.1f} MFLOP")

        def plain(name: str, threads: int, precision: str) -> dict:
            r = plain_loop(task, cfg, threads=threads, precision=precision, warmup=args.warmup, steps=args.steps)
            r["mfu"] = fps * r["samples_per_s"] / (best[(precision, threads)] * 1e9)
            measured[name] = r
            log(f"{name}: {r['samples_per_s']:.1f} samples/s over {r['steps']} steps (step-rate cv "
                f"{r['step_cv']:.2f}), MFU {100 * r['mfu']:.1f}%")
            return r

        for precision in ("fp32", "bf16"):
            plain(f"plain_{precision}_x{th}", th, precision)
        if th != 2:
            plain(f"plain_{p}_x2", 2, p)

        # ---- 4. + 5. Ray Train
        ray_res: dict[tuple[int, int], list[dict]] = {}
        baseline = None
        if not args.no_ray:
            import ray

            # MLflow's sqlite store migrates its schema on first use: do it now, outside every fit wall-clock
            t = time.perf_counter()
            client_for(cfg, root).search_experiments()
            log(f"MLflow store created in {time.perf_counter() - t:.1f}s")
            t = time.perf_counter()
            ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False,
                     object_store_memory=256 * 2**20, log_to_driver=args.ray_logs)
            ray_started = True
            results["ray_init_s"] = time.perf_counter() - t
            machine["ray"] = ray.__version__
            log(f"ray.init(num_cpus={args.ray_cpus}) in {results['ray_init_s']:.1f}s (ray {ray.__version__})")
            shapes = [sh for sh in dict.fromkeys([(1, th), (2, 1), (1, 2)]) if sh[0] * sh[1] <= args.ray_cpus]
            for sh in dict.fromkeys([(1, th), (2, 1), (1, 2)]):
                if sh not in shapes:
                    log(f"skip Ray {sh[0]}x{sh[1]}: needs {sh[0] * sh[1]} CPUs, Ray has {args.ray_cpus}")
            for round_ in range(1, args.repeats + 1):
                tag = f"#{round_}" if args.repeats > 1 else ""
                for workers, threads in shapes:
                    r = ray_run(overrides, args.task, root, workers=workers, threads=threads, warmup=args.warmup,
                                steps=args.steps, batch_size=args.batch_size, videos=videos)
                    r["mfu"] = fps * r["samples_per_s"] / (best[(p, threads)] * 1e9 * workers)
                    name = f"ray_{workers}x{threads}{tag}"
                    measured[name] = r
                    ray_res.setdefault((workers, threads), []).append(r)
                    log(f"{name}: steady {r['samples_per_s']:.1f} samples/s over {r['steps']} steps (step-rate cv "
                        f"{r['step_cv']:.2f}); fit wall-clock {r['wall_s']:.1f}s, of which {r['outside_steady_s']:.1f}s "
                        f"outside the measured steps: {r.get('until_first_step_s', float('nan')):.1f}s until step 1 "
                        f"ended (MLflow run, worker group start, first step), {r.get('after_last_step_s', float('nan')):.1f}s "
                        f"after the last step (validation, checkpoint, export)")
            # The overhead baseline: the plain loop in a process without Ray, before ray.init and again after
            # ray.shutdown: in a driver connected to Ray the same loop ran ~6% slower when this was written.
            ray.shutdown()
            ray_started = False
            if (1, th) in ray_res:
                after = plain(f"plain_{p}_x{th}_after_ray", th, p)
                baseline = (measured[f"plain_{p}_x{th}"]["samples_per_s"] + after["samples_per_s"]) / 2

        # ---- table
        med = statistics.median
        rows += [{"name": f"matmul_peak_{n}_x{k}", "value": v, "unit": "GFLOP/s"}
                 for (n, k), v in sorted(peaks.items(), key=lambda kv: (kv[0][1], kv[0][0] != "fp32"))]
        rows.append({"name": "model_flops_per_sample", "value": fps / 1e6, "unit": "MFLOP"})
        for precision in ("fp32", "bf16"):
            r = measured[f"plain_{precision}_x{th}"]
            rows += [{"name": f"plain_{precision}_x{th}", "value": r["samples_per_s"], "unit": "samples/s"},
                     {"name": f"plain_{precision}_x{th}_mfu", "value": 100 * r["mfu"], "unit": "%"}]
        rows.append({"name": "bf16_vs_fp32_speedup", "unit": "x",
                     "value": measured[f"plain_bf16_x{th}"]["samples_per_s"] / measured[f"plain_fp32_x{th}"]["samples_per_s"]})
        if th != 2:
            rows.append({"name": f"plain_{p}_x2", "value": measured[f"plain_{p}_x2"]["samples_per_s"], "unit": "samples/s"})
        if ray_res:
            rows.append({"name": "ray_init", "value": results["ray_init_s"], "unit": "s"})
        ones = ray_res.get((1, th))
        if ones and baseline:
            ratio = baseline / med([r["samples_per_s"] for r in ones])
            rows += [
                {"name": f"plain_{p}_x{th}_baseline", "value": baseline, "unit": "samples/s"},
                {"name": f"ray_1x{th}_steady", "value": med([r["samples_per_s"] for r in ones]), "unit": "samples/s"},
                {"name": f"ray_1x{th}_mfu", "value": 100 * med([r["mfu"] for r in ones]), "unit": "%"},
                {"name": f"ray_1x{th}_fit_wall_clock", "value": med([r["wall_s"] for r in ones]), "unit": "s"},
                {"name": f"ray_overhead_plain_over_ray_x{th}", "value": ratio, "unit": "ratio",
                 "target": f"<= {OVERHEAD_TARGET}", "met": bool(ratio <= OVERHEAD_TARGET)},
            ]
        twos, wides = ray_res.get((2, 1)), ray_res.get((1, 2))
        if twos and wides:
            scaling = med([a["samples_per_s"] / b["samples_per_s"] for a, b in zip(twos, wides)])
            for label, runs in (("2x1", twos), ("1x2", wides)):
                if any(r["name"] == f"ray_{label}_steady" for r in rows):
                    continue  # --threads 2: the 1x2 run is the overhead run, already listed
                rows += [
                    {"name": f"ray_{label}_steady", "value": med([r["samples_per_s"] for r in runs]), "unit": "samples/s"},
                    {"name": f"ray_{label}_fit_wall_clock", "value": med([r["wall_s"] for r in runs]), "unit": "s"},
                ]
            rows.append({"name": "ray_scaling_2x1_over_1x2", "value": scaling, "unit": "ratio",
                         "target": f">= {SCALING_TARGET}", "met": bool(scaling >= SCALING_TARGET)})
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        if sampler is not None:
            sampler.stop()
        if args.keep_temp:
            log(f"kept the temp project {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    cpu = {name: sampler.usage(*r["window"]) if sampler else None for name, r in measured.items()}
    for name, r in measured.items():
        r["cpu"] = cpu[name]
    results["runs"] = measured
    results["total_seconds"] = time.perf_counter() - started
    results["rows"] = rows
    results["method"] = (
        "steady samples/s = samples / seconds summed over the steps after the first --warmup ones (and not the "
        "first step of a later epoch). Plain loop: per-step wall times in this process (data loading included). "
        "Ray: per-step entries of the MLflow metric train/samples_per_s (train.runtime.log_every=1; each = one step's "
        "samples / time since the previous entry), so Ray start-up, worker-group creation, validation, checkpoint "
        "and export are excluded; they are in *_fit_wall_clock. Overhead baseline = mean of the plain loop before "
        "ray.init and again after ray.shutdown (no Ray in the process). Ray rows and the scaling ratio are medians "
        "over --repeats rounds. MFU = FLOPs/sample (FlopCounterMode, "
        "forward+backward; convolutions and matmuls only) x samples/s / the best matmul rate of the same dtype and "
        "threads (a median dragged down by another process's load inflates MFU)."
    )
    print()
    print(f"Training throughput: task {args.task}, {args.dataset}, {videos} train videos, batch {args.batch_size}/worker, "
          f"{args.warmup} warm-up + {args.steps} timed steps, baseline precision {p}")
    print("Method: " + results["method"])
    if sampler is not None:
        print("\nCPU use in each steady window (cores; 'other processes' are not this benchmark's and skew it):")
        for name, u in cpu.items():
            print(f"  {name}: {describe_usage(u)}")
    print()
    print_table(rows)
    busy = {n: u["other_processes_cores"] for n, u in cpu.items() if u and u["other_processes_cores"] > 0.25}
    if busy:
        worst = max(busy, key=busy.get)
        print(f"\nWARNING: other processes used more than 0.25 of the {os.cpu_count()} cores during {len(busy)} of "
              f"{len(cpu)} measurements (worst: {busy[worst]:.2f} in {worst}); the figures and ratios are skewed, "
              "re-run on a quiet machine (or with --repeats 3) before drawing conclusions")
        results["contention_warning"] = busy
    over = [n for n, r in measured.items() if r.get("mfu", 0) > 1.0]
    if over:
        shown = ", ".join(f"{n}_x{k} median {v:.0f} best {best[(n, k)]:.0f}" for (n, k), v in sorted(peaks.items()))
        print(f"NOTE: MFU above 100% in {', '.join(over)}: the matmul peak was measured low (GFLOP/s: {shown}); "
              "even its best of --matmul-repeats was dragged down by contention")
    print(f"\ntotal {results['total_seconds']:.0f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
