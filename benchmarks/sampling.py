#!/usr/bin/env python
"""Sampling speed on this machine: next-scale (USAM) vs raster order, KV cache vs recompute, MFU.

Builds the default USAM transformer (``model`` in params.yaml; the token stream of the
default tokenizer: 105 tokens of 16 bits for an 8-frame 32x32 clip) and a raster-order
autoregressive model with the same blocks, width, depth and bitwise head over the same
tokens (``usam.models.raster_ar``). Weights are random: speed does not depend on them.
Measures, side by side in one run, the median wall-clock of generating a batch:

  1. USAM next-scale sampling (one forward pass per stage, KV cache) vs raster-order
     next-token sampling (one forward pass per token, KV cache): the speed-up (goal >= 10x);
  2. USAM with the KV cache vs recomputing the whole prefix at every stage;
  3. tokens/s of each;
  4. FLOP utilization: FLOPs of one USAM sample (FlopCounterMode over a teacher-forced pass
     of the whole stream, what the cached stages compute together) per second, against the
     measured fp32 matmul peak at the same thread count.

Guidance doubles the batch, so it is off here (cfg 1) for every model alike. Prints a table
and writes JSON to ``--out``; asserts nothing about speed. Example:

    .venv/bin/python benchmarks/sampling.py --batch 1 8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GOAL = 10.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to measure")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median), after one warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. model.width=256")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "sampling.json")
    return p.parse_args(argv)


def median_seconds(fn, repeats: int) -> float:
    from usam.eval.cost import median_latency

    return median_latency(fn, repeats=repeats, warmup=1)


def matmul_peak(threads: int, n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def main(argv=None) -> int:
    from usam.config import compose
    from usam.models.bsq import MultiScaleBSQ
    from usam.models.raster_ar import RasterAR
    from usam.models.tokenizer import latent_frames
    from usam.models.usam import USAM, USAMConfig

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose(args.set)
    q_cfg, m = cfg.tokenizer.quantizer, cfg.model
    scales = tuple(q_cfg.scales) if q_cfg.multiscale else (q_cfg.scales[-1],)
    frames = latent_frames(cfg.preprocess.augment.clip_frames or cfg.data.frames, cfg.tokenizer.arch.temporal_down)
    usam = USAM(USAMConfig(q_cfg.bits, list(scales), frames, q_cfg.clip_frames, width=m.width, depth=m.depth, heads=m.heads,
                           mlp_ratio=m.mlp_ratio, attention=m.attention, positions=m.positions, num_classes=10)).eval()
    quantizer = MultiScaleBSQ(q_cfg.bits, scales, q_cfg.clip_frames)
    tokens = usam.bounds[-1]
    raster = RasterAR(q_cfg.bits, tokens, width=m.width, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio,
                      num_classes=10).eval()
    peak = matmul_peak(args.threads)
    log = lambda text: print(text, flush=True)  # noqa: E731
    log(f"{tokens} tokens of {q_cfg.bits} bits in {len(usam.schedule.stages)} stages; width {m.width}, depth {m.depth}, "
        f"{m.attention} attention; {args.threads} threads; fp32 matmul peak {peak:.0f} GFLOP/s")

    flops_per_sample = usam.flops_per_sample(quantizer)

    rows = []
    for b in args.batch:
        cond = {"class": torch.arange(b) % 10}
        seconds = {
            "usam_cached": median_seconds(lambda: usam.generate(quantizer, cond, b), args.repeats),
            "usam_recompute": median_seconds(lambda: usam.generate(quantizer, cond, b, use_cache=False), args.repeats),
            "raster_cached": median_seconds(lambda: raster.generate(b, cond["class"]), max(1, args.repeats // 2)),
        }
        row = {"batch": b, **{f"{k}_s": v for k, v in seconds.items()},
               "speedup_vs_raster": seconds["raster_cached"] / seconds["usam_cached"],
               "cache_speedup": seconds["usam_recompute"] / seconds["usam_cached"],
               "usam_tokens_per_s": b * tokens / seconds["usam_cached"],
               "raster_tokens_per_s": b * tokens / seconds["raster_cached"],
               "usam_mfu": b * flops_per_sample / seconds["usam_cached"] / (peak * 1e9)}
        rows.append(row)
        log(f"batch {b:3d}: USAM {seconds['usam_cached'] * 1e3:8.1f} ms ({row['usam_tokens_per_s']:8.0f} tok/s)  "
            f"raster {seconds['raster_cached'] * 1e3:9.1f} ms ({row['raster_tokens_per_s']:7.0f} tok/s)  "
            f"speed-up {row['speedup_vs_raster']:5.1f}x (goal >= {GOAL:g}x)  "
            f"cache vs recompute {row['cache_speedup']:4.2f}x  MFU {row['usam_mfu']:.1%}")
    results = {"machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__},
               "tokens": tokens, "stages": len(usam.schedule.stages), "overrides": args.set,
               "parameters": {"usam": sum(p.numel() for p in usam.parameters()),
                              "raster_ar": sum(p.numel() for p in raster.parameters())},
               "flops_per_sample": flops_per_sample, "matmul_peak_gflops": peak, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
