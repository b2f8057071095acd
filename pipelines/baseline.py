"""DVC stage `baseline`: train one baseline (raster_ar, maskgit, gan, diffusion) on one dataset.

Same harness, recipe (`train`), data and seed as USAM. Writes models/baselines/<model>/<name>/
(<model>.pt and a sample grid per class: PNG, GIF, MP4) and metrics/baselines/<model>/<name>.json
(validation metrics, the share of samples the frame evaluator assigns to their class with chance
level, weights sha256, parameters, training time, MLflow run id).
"""

from __future__ import annotations

import argparse
import json
import shutil

from pipelines import evaluator_weights, record_weights
from usam.config import load_params
from usam.errors import UsamError, main_guard
from usam.eval.class_grid import class_grid
from usam.eval.generators import load_generator
from usam.files import atomic_dir
from usam.paths import find_project_root, resolve
from usam.track import client_for
from usam.train import fit, with_dataset
from usam.train.tasks import BASELINES, make_task


@main_guard
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help=f"one of {', '.join(BASELINES)}")
    parser.add_argument("name", help="dataset, one of baselines.datasets")
    args = parser.parse_args(argv)
    if args.model not in BASELINES:
        raise UsamError(f"unknown baseline {args.model!r}", where="pipelines.baseline MODEL",
                        fix=f"use one of {', '.join(BASELINES)}")
    root = find_project_root()
    cfg = with_dataset(load_params(root / "params.yaml"), args.name)
    if args.name not in cfg.data.build:
        raise UsamError(f"baselines.datasets names {args.name!r}, which data.build does not generate",
                        where="params.yaml: baselines.datasets",
                        fix=f"set baselines.datasets to datasets of data.build ({', '.join(cfg.data.build)})")
    make_task(args.model, cfg, resolve(cfg.data.root, root), root).check_data()
    out = root / "models" / "baselines" / args.model / args.name
    client = client_for(cfg, root)
    with atomic_dir(out) as tmp:
        result = fit(cfg, args.model, root=root, out_dir=tmp / ".fit", run_name=f"{args.model}/{args.name}")
        weights = tmp / f"{args.model}.pt"
        shutil.move(result.weights_path, weights)
        shutil.rmtree(tmp / ".fit")
        gen = load_generator(args.model, cfg, root, weights, result.weights_sha256)
        scores = {**class_grid(gen, cfg, tmp / "samples", client, result.run_id,
                               lambda: evaluator_weights(root, args.name, "frame")), "parameters": gen.parameters}
    record_weights(client, result.run_id, out / weights.name, root)
    report = {**{k: v for k, v in result.metrics.items() if k.startswith("val_")}, **scores,
              "weights_sha256": result.weights_sha256, "train_seconds": round(result.train_seconds, 1),
              "mlflow_run_id": result.run_id}
    path = root / "metrics" / "baselines" / args.model / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"{args.model}/{args.name}: samples classified as their class {scores['sample_class_acc']:.0%} "
          f"(chance {scores['chance']:.0%})")


if __name__ == "__main__":
    main()
