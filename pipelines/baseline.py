"""DVC stage `baseline`: train one baseline (raster_ar, maskgit, gan, diffusion) on one dataset, with one seed.

Same harness, recipe (`train`, at the family's own learning rate when it sets one), data and seeds as
USAM. Writes models/baselines/<model>/<name>/seed<k>/ (<model>.pt and a sample grid per class: PNG,
GIF, MP4) and metrics/baselines/<model>/<name>/seed<k>.json
(validation metrics, the share of samples the frame evaluator assigns to their class with chance
level, weights sha256, parameters, training time, MLflow run id).
"""

from __future__ import annotations

import json
import shutil

from pipelines import SEED, parse_stage, record_weights
from usam.errors import UsamError, main_guard
from usam.eval.class_grid import class_grid
from usam.eval.generators import load_generator
from usam.eval.quality import quality_hooks
from usam.files import atomic_dir
from usam.track import client_for
from usam.train import fit, with_dataset
from usam.train.tasks import BASELINES, make_task


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, layout = parse_stage(__doc__, argv, {
        "model": f"one of {', '.join(BASELINES)}", "name": "dataset, one of baselines.datasets", **SEED}, {
        "tokenizer": (lambda layout, a: layout.tokenizer_dir(a.name), "the tokenizer it trains on"),
        "evaluators": (lambda layout, a: layout.evaluators(a.name), "the evaluators that score its samples"),
        "out": (lambda layout, a: layout.generator_dir(a.model, a.name, a.seed), "the model's folder"),
        "metrics": (lambda layout, a: layout.generator_metrics(a.model, a.name, a.seed), "the metrics JSON")})
    if args.model not in BASELINES:
        raise UsamError(f"unknown baseline {args.model!r}", where="pipelines.baseline MODEL",
                        fix=f"use one of {', '.join(BASELINES)}")
    cfg = with_dataset(cfg, args.name)
    if args.name not in cfg.data.build:
        raise UsamError(f"baselines.datasets names {args.name!r}, which data.build does not generate",
                        where="params.yaml: baselines.datasets",
                        fix=f"set baselines.datasets to datasets of data.build ({', '.join(cfg.data.build)})")
    inputs = layout.inputs(cfg, tokenizers=args.tokenizer)
    make_task(args.model, cfg, layout, inputs).check_data()
    out = args.out
    client = client_for(cfg, root)
    with atomic_dir(out) as tmp:
        result = fit(cfg, args.model, root=root, out_dir=tmp / ".fit", run_name=f"{args.model}/{args.name}/seed{args.seed}",
                     inputs=inputs,
                     hooks=quality_hooks(cfg, layout, args.model, args.evaluators))
        weights = tmp / f"{args.model}.pt"
        shutil.move(result.weights_path, weights)
        shutil.rmtree(tmp / ".fit")
        gen = load_generator(args.model, cfg, layout, weights, result.weights_sha256, inputs)
        scores = {**class_grid(gen, cfg, tmp / "samples", client, result.run_id,
                               lambda: layout.evaluator_weights(args.name, "frame", args.evaluators)),
                  "parameters": gen.parameters}
    record_weights(client, result.run_id, out / weights.name, layout)
    report = {**{k: v for k, v in result.metrics.items() if k.startswith("val_")}, **scores,
              "weights_sha256": result.weights_sha256, "train_seconds": round(result.train_seconds, 1), "seed": args.seed,
              "steps": int(result.metrics.get("step", 0)), "train_flops": int(result.metrics.get("train_flops", 0)),
              "mlflow_run_id": result.run_id}
    path = args.metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"{args.model}/{args.name}: samples classified as their class {scores['sample_class_acc']:.0%} "
          f"(chance {scores['chance']:.0%})")


if __name__ == "__main__":
    main()
