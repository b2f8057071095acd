"""DVC stage `select`: choose one generator's sampling settings on the val split (no retraining).

Samples ``eval.select.num_samples`` videos per point of ``eval.select.grids[<model>]`` from one seed's
weights (the pipeline passes ``seeds[0]``; the other seeds are then scored at the same setting) and
scores each against the dataset's **val** split: FID-domain (frame evaluator features) and the share of
samples the frame evaluator assigns to their class. The rule of ``usam.eval.select.choose`` picks the
setting; the `evaluate` stages score the test split once, there.

Writes metrics/select/<model>/<name>.json (the chosen setting, its val scores, the criterion and the
evaluation record) and eval/select/<model>/<name>/ (grid.csv: every point; tradeoff.csv: FID-domain and
class accuracy against the guidance scale, the other knobs at their chosen values).
"""

from __future__ import annotations

import csv
import json

import torch

from pipelines import SEED, parse_stage
from pipelines.evaluate import MODELS, evaluation_record, generator_weights, real_videos
from usam.artifacts.sampling import classify_frames
from usam.errors import UsamError, main_guard
from usam.eval.fidelity import fidelity, frames_of, register_domain_extractor
from usam.eval.generators import load_generator
from usam.eval.select import CRITERION, check_grids, choose, run_grid, tradeoff
from usam.files import atomic_dir
from usam.train import with_dataset

VAL_SEED_OFFSET = 100_000  # val samples come from another stream than the test ones (sampling seed = seed + this)


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, layout = parse_stage(__doc__, argv, {
        "model": f"one of {', '.join(MODELS)}", "name": "dataset the model was trained on", **SEED}, {
        "weights": (lambda layout, a: layout.generator_dir(a.model, a.name, a.seed), "the seed's model"),
        "prepared": (lambda layout, a: layout.prepared(), "the prepared datasets"),
        "evaluators": (lambda layout, a: layout.evaluators(a.name), "the dataset's evaluators"),
        "out": (lambda layout, a: layout.root / "eval" / "select" / a.model / a.name, "the grid and trade-off CSVs"),
        "metrics": (lambda layout, a: layout.selection(a.model, a.name), "the chosen setting JSON")})
    if args.model not in MODELS:
        raise UsamError(f"unknown model {args.model!r}", where="pipelines.select MODEL", fix=f"use one of {', '.join(MODELS)}")
    seed = args.seed
    cfg = with_dataset(cfg, args.name)
    check_grids(cfg, [args.model])  # a bad grid fails here, before any sampling
    weights, run_id = generator_weights(layout, args.model, args.name, seed, args.weights)
    gen = load_generator(args.model, cfg, layout, weights.path, weights.sha256)
    torch.set_num_threads(max(1, int(cfg.train.runtime.threads_per_worker)))
    n, share = cfg.eval.select.num_samples, cfg.eval.select.class_acc_share
    classes = torch.arange(n) % len(gen.class_names)
    val = real_videos(args.prepared, args.name, "val")
    frame = layout.evaluator_weights(args.name, "frame", args.evaluators)
    frame_ext = register_domain_extractor("frame", frame.path, frame.sha256, gen.task.normalize)
    kid = min(50, n, len(val))
    sampling_seed = seed + VAL_SEED_OFFSET

    def score(variant) -> tuple[float, float]:
        fake = variant.sample(classes, sampling_seed, batch_size=cfg.eval.batch_size)
        fid = fidelity(frames_of(val), frames_of(fake), frame_ext, label="domain", kid_subset=kid, isc=False,
                       prc=False)["fid_domain"]
        acc = float((classify_frames(fake, frame.path, frame.sha256, gen.task.normalize) == classes).float().mean())
        return fid, acc

    print(f"select {args.model}/{args.name}: {n} val samples per setting (seed {seed} model)")
    scored = run_grid(gen, cfg, args.model, score)
    chosen = choose(scored, share)
    curve = tradeoff(scored, chosen)
    with atomic_dir(args.out) as tmp:
        _write_csv(tmp / "grid.csv", [s.row() for s in scored])
        _write_csv(tmp / "tradeoff.csv", curve, ["guidance", "fid_domain", "class_acc"])
    report = {"model": args.model, "dataset": args.name, "split": "val", "criterion": CRITERION.format(share=share),
              "grid_points": len(scored), "chosen": chosen.settings, "val_fid_domain": round(chosen.fid_domain, 6),
              "val_class_acc": round(chosen.class_acc, 6),
              **evaluation_record(layout, args.prepared, args.name, "val", weights, run_id, frame, None, n, sampling_seed)}
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    shown = ", ".join(f"{k}={v}" for k, v in chosen.settings.items()) or "its only setting"
    print(f"{args.model}/{args.name}: chose {shown} (val FID-domain {chosen.fid_domain:.2f}, "
          f"class accuracy {chosen.class_acc:.0%})")


def _write_csv(path, rows: list[dict], header: list[str] | None = None) -> None:
    header = header or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
