#!/usr/bin/env python
"""Sampling speed on this machine: next-scale (USAM) against raster order, each figure beside its limit.

Two token streams, weights random (speed does not depend on them):

- ``default``: the default USAM transformer and tokenizer stream (``model``/``tokenizer`` in params.yaml:
  105 tokens of 16 bits in 6 stages for an 8-frame 32x32 clip);
- ``paper_stream``: the paper profile's token stream (its bits, scales and frames) through the default
  width and depth, so the CPU can sample it in raster order too.

A raster-order autoregressive model with the same blocks, width, depth and bitwise head over the same
tokens (``usam.models.raster_ar``) is the baseline, as fast as it honestly gets: a KV cache written in
place (no per-token re-allocation), only the new token's input per pass, the same kernels
(``scaled_dot_product_attention`` with the mask slice). Every figure is measured side by side in one
run: each round times USAM and raster order back to back and the ratio is the median of the rounds'
ratios, so a noisy machine moves both alike. Per stream and batch it measures:

1. ``exact``: USAM as the pipeline samples (per-token modulation, fp32) against raster order in fp32;
2. ``best``: each model at its fastest: USAM with per-stage modulation (a stage's condition once per
   sample, a third fewer FLOPs) in fp32 or bf16 autocast, whichever is faster here, against raster order
   in fp32 or bf16, whichever is faster;
3. the limit of the ratio: a latency-bound sampler's ideal is the pass-count ratio, tokens / stages
   (17.5x on the default stream); the fraction of it reached;
4. FLOP utilization of USAM: FLOPs of one sample (FlopCounterMode over a teacher-forced pass of the whole
   stream, what the cached stages compute together) per second, against the measured fp32 and bf16
   matmul peaks at the same thread count;
5. the KV cache against recomputing the whole prefix at every stage (default stream).

Guidance doubles the batch, so it is off here (cfg 1) for every model alike. Prints a table, writes JSON
to ``--out`` (``report``: one row per figure, with its limit and ratio) and asserts nothing about speed:

    .venv/bin/python benchmarks/sampling.py                  # both streams, batch 1 and 8 (~3 min)
    .venv/bin/python benchmarks/sampling.py --streams default --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GOALS = {1: 12.0, 8: 10.0}  # next-scale over raster order, default stream, by batch
COMMAND = "python benchmarks/sampling.py"
PAPER_STREAM = ["tokenizer.quantizer.bits", "tokenizer.quantizer.scales", "tokenizer.quantizer.clip_frames",
                "tokenizer.arch.temporal_down", "data.frames", "preprocess.augment.clip_frames"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    p.add_argument("--streams", nargs="+", default=["default", "paper_stream"], choices=["default", "paper_stream"])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per figure (median of ratios), after a warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile both models' per-pass forward (USAM: a graph per stage; raster order: one "
                        "graph, dynamic in the cache length) and time them; compile time is reported apart")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. model.width=256")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sampling.json")
    return p.parse_args(argv)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 7) -> float:
    """GFLOP/s of an n x n matmul in ``dtype`` (the best of ``repeats`` after a warm-up: a peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / min(seconds(lambda: a @ b) for _ in range(repeats)) / 1e9


def stream_config(name: str, overrides: list[str]):
    from usam.config import compose

    if name == "default":
        return compose(overrides)
    paper = compose(["profile=paper"])
    pick = []
    for key in PAPER_STREAM:
        value = paper
        for part in key.split("."):
            value = getattr(value, part)
        pick.append(f"{key}={json.dumps(value if not hasattr(value, '__iter__') else list(value))}")
    return compose([*overrides, *pick])


def build(cfg):
    from usam.models.bsq import MultiScaleBSQ
    from usam.models.raster_ar import RasterAR
    from usam.models.tokenizer import latent_frames
    from usam.models.usam import USAM, USAMConfig

    q_cfg, m = cfg.tokenizer.quantizer, cfg.model
    scales = tuple(q_cfg.scales) if q_cfg.multiscale else (q_cfg.scales[-1],)
    frames = latent_frames(cfg.preprocess.augment.clip_frames or cfg.data.frames, cfg.tokenizer.arch.temporal_down)
    usam = USAM(USAMConfig(q_cfg.bits, list(scales), frames, q_cfg.clip_frames, width=m.width, depth=m.depth,
                           heads=m.heads, mlp_ratio=m.mlp_ratio, attention=m.attention, positions=m.positions,
                           num_classes=10)).eval()
    raster = RasterAR(q_cfg.bits, usam.bounds[-1], width=m.width, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio,
                      num_classes=10).eval()
    return usam, raster, MultiScaleBSQ(q_cfg.bits, scales, q_cfg.clip_frames)


def side_by_side(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Each round runs every function once, in turn (after one warm-up of each): seconds per round."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(seconds(fn))
    return times


def ratio(times: dict, slow: str, fast: str) -> float:
    return statistics.median(s / f for s, f in zip(times[slow], times[fast]))


def compiled(usam, raster):
    """Copies of both models whose per-pass forward runs through torch.compile (inductor)."""
    import copy

    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    cu, cr = copy.deepcopy(usam), copy.deepcopy(raster)
    cu._run = torch.compile(cu._run, dynamic=False)  # one graph per stage: its shapes are fixed
    cr._blocks = torch.compile(cr._blocks, dynamic=True)  # one graph over the growing cache
    return cu, cr


def measure(usam, raster, quantizer, batch: int, rounds: int, recompute: bool, compiled_models=None) -> dict:
    cond = {"class": torch.arange(batch) % 10}
    fns = {f"usam_{mod}_{prec}": (lambda mod=mod, prec=prec: usam.generate(quantizer, cond, batch, modulation=mod,
                                                                            precision=prec))
           for mod, prec in (("per_token", "fp32"), ("per_stage", "fp32"), ("per_stage", "bf16"))}
    for prec in ("fp32", "bf16"):
        fns[f"raster_{prec}"] = lambda prec=prec: raster.generate(batch, cond["class"], precision=prec)
    if recompute:
        fns["usam_recompute"] = lambda: usam.generate(quantizer, cond, batch, use_cache=False)
    compile_s = {}
    if compiled_models is not None:
        cu, cr = compiled_models
        fns["usam_per_stage_fp32_compiled"] = lambda: cu.generate(quantizer, cond, batch, modulation="per_stage")
        fns["raster_fp32_compiled"] = lambda: cr.generate(batch, cond["class"])
        for k in ("usam_per_stage_fp32_compiled", "raster_fp32_compiled"):  # the first call compiles
            compile_s[k] = seconds(fns[k])
    times = side_by_side(fns, rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    usam_best = min((k for k in med if k.startswith("usam_per_stage")), key=med.get)
    raster_best = min((k for k in med if k.startswith("raster_")), key=med.get)
    row = {"batch": batch, "seconds": med, "compile_seconds": compile_s, "usam_best": usam_best, "raster_best": raster_best,
           "speedup_exact": ratio(times, "raster_fp32", "usam_per_token_fp32"),
           "speedup_best": ratio(times, raster_best, usam_best)}
    if recompute:
        row["cache_speedup"] = ratio(times, "usam_recompute", "usam_per_token_fp32")
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda text: print(text, flush=True)  # noqa: E731
    load_before = os.getloadavg()[0]
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    log(f"{args.threads} threads; matmul peak fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s; "
        f"load average {load_before:.2f}")
    results = {"machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__},
               "matmul_peak_gflops": peaks, "overrides": args.set, "streams": {}}
    report = []

    def add(figure, value, unit, limit, limit_is):
        report.append({"figure": figure, "value": round(value, 4), "unit": unit, "limit": limit, "limit_is": limit_is,
                       "ratio": round(value / limit, 4) if limit else None, "command": COMMAND})

    for name in args.streams:
        torch.manual_seed(0)
        usam, raster, quantizer = build(stream_config(name, args.set))
        tokens, stages = usam.bounds[-1], len(usam.schedule.stages)
        ideal = tokens / stages
        flops = usam.flops_per_sample(quantizer)
        log(f"\n{name}: {tokens} tokens of {usam.bits} bits in {stages} stages (ideal ratio {ideal:.1f}x); width "
            f"{usam.width}, depth {len(usam.blocks)}; USAM {flops / 1e6:.0f} MFLOP per sample")
        rows = []
        both = compiled(usam, raster) if args.compile else None
        for b in args.batch:
            row = measure(usam, raster, quantizer, b, args.rounds if name == "default" else max(2, args.rounds // 2),
                          recompute=name == "default", compiled_models=both)
            s = row["seconds"]
            row["usam_mfu"] = {k: b * flops / s[k] / (peaks["bf16" if "bf16" in k else "fp32"] * 1e9)
                               for k in s if k.startswith("usam_") and k != "usam_recompute"}
            rows.append(row)
            goal = GOALS.get(b) if name == "default" else None
            log(f"  batch {b:3d}: exact {s['usam_per_token_fp32'] * 1e3:8.1f} ms vs raster {s['raster_fp32'] * 1e3:9.1f} ms"
                f" = {row['speedup_exact']:5.1f}x | best {s[row['usam_best']] * 1e3:8.1f} ms ({row['usam_best'][5:]}) vs "
                f"{s[row['raster_best']] * 1e3:9.1f} ms ({row['raster_best'][7:]}) = {row['speedup_best']:5.1f}x | "
                f"ideal {ideal:.1f}x" + (f", goal >= {goal:g}x" if goal else "")
                + (f" | cache vs recompute {row['cache_speedup']:.2f}x" if "cache_speedup" in row else ""))
            label = f"{name}, batch {b}"
            add(f"next-scale over raster, exact (pipeline sampler), {label}", row["speedup_exact"], "x", ideal,
                "pass-count ratio tokens/stages")
            add(f"next-scale over raster, each at its fastest, {label}", row["speedup_best"], "x", ideal,
                "pass-count ratio tokens/stages")
            if goal:
                add(f"goal: next-scale over raster at its fastest, {label}", row["speedup_best"], "x", goal, "goal")
            best = row["usam_best"]
            precision = "bf16" if "bf16" in best else "fp32"
            add(f"USAM sampling MFU ({best[5:]}), {label}", row["usam_mfu"][best], "", 1.0,
                f"{precision} matmul peak {peaks[precision]:.0f} GFLOP/s")
            for k, v in row["compile_seconds"].items():  # the first call at a new shape: compile plus one run
                add(f"torch.compile, first call, {k.split('_')[0]}, {label}", v, "s", None, "paid once per shape")
        results["streams"][name] = {"tokens": tokens, "stages": stages, "ideal_ratio": ideal, "flops_per_sample": flops,
                                    "parameters": {"usam": sum(p.numel() for p in usam.parameters()),
                                                   "raster_ar": sum(p.numel() for p in raster.parameters())},
                                    "rows": rows}
    load_after = os.getloadavg()[0]
    results["load_average"] = {"before": load_before, "after": load_after}
    if max(load_before, load_after) > args.threads * 0.5:
        results["contention_warning"] = (f"load average {load_before:.2f} before, {load_after:.2f} after on "
                                         f"{os.cpu_count()} cores: other work ran beside the benchmark")
        log(results["contention_warning"])
    results["report"] = report
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
