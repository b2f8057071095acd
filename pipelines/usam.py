"""DVC stage `usam`: train the USAM transformer of one dataset on its tokenizer's token stream.

Writes models/usam/<name>/usam.pt, a sample grid per class (models/usam/<name>/samples/:
PNG, GIF, MP4) and metrics/usam/<name>.json: teacher-forced val loss and bit accuracy, the
share of samples the frame evaluator assigns to the class they were generated for (with
chance level), weights sha256, parameters, training time, MLflow run id.
"""

from __future__ import annotations

import json
import shutil

import torch

from pipelines import DATASET, parse_stage, record_weights
from usam.artifacts.sampling import Sampler, classify_frames
from usam.errors import main_guard
from usam.files import atomic_dir
from usam.media.panels import write_grid
from usam.models import parameter_count
from usam.track import client_for
from usam.train import fit, with_dataset
from usam.train.tasks import make_task


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, layout = parse_stage(__doc__, argv, DATASET, {
        "tokenizer": (lambda layout, a: layout.tokenizer_dir(a.name), "the tokenizer it trains on"),
        "evaluators": (lambda layout, a: layout.evaluators(a.name), "the evaluators that score its samples"),
        "out": (lambda layout, a: layout.generator_dir("usam", a.name), "the model's folder"),
        "metrics": (lambda layout, a: layout.generator_metrics("usam", a.name), "the metrics JSON")})
    name, out = args.name, args.out
    cfg = with_dataset(cfg, name)
    inputs = layout.inputs(cfg, tokenizers=args.tokenizer)
    task = make_task("usam", cfg, layout, inputs)
    task.check_data()
    client = client_for(cfg, root)
    with atomic_dir(out) as tmp:
        result = fit(cfg, "usam", root=root, out_dir=tmp / ".fit", run_name=f"usam/{name}", inputs=inputs)
        shutil.move(result.weights_path, tmp / "usam.pt")
        shutil.rmtree(tmp / ".fit")
        sampler = Sampler.load(tmp / "usam.pt", result.weights_sha256, root)
        cond, names = task.grid_conditions(cfg.model.sampling.per_class, torch.device("cpu"))
        num = len(names) * cfg.model.sampling.per_class
        videos = sampler.sample(cond or sampler.model.null_condition(num, torch.device("cpu")), num,
                                cfg.model.sampling, cfg.seed)
        files = write_grid(videos, tmp / "samples", "samples", mp4=True)
        for f in files:
            client.log_artifact(result.run_id, str(f), "samples")
        scores = {"val_loss": result.metrics.get("val_loss"), "val_bit_acc": result.metrics.get("val_bit_acc")}
        if "class" in cond:
            frame = layout.evaluator_weights(name, "frame", args.evaluators)
            predicted = classify_frames(videos, frame.path, frame.sha256, sampler.meta["normalize"])
            scores["sample_class_acc"] = float((predicted == cond["class"]).float().mean())
            scores["chance"] = 1.0 / len(names)
            client.log_metric(result.run_id, "samples/class_acc", scores["sample_class_acc"])
    record_weights(client, result.run_id, out / "usam.pt", layout)
    flops = sampler.model.flops_per_sample(sampler.tokenizer.quantizer)
    client.log_metric(result.run_id, "model/flops_per_sample", flops)
    report = {**scores, "weights_sha256": result.weights_sha256, "parameters": parameter_count(sampler.model),
              "flops_per_sample": flops,
              "train_seconds": round(result.train_seconds, 1), "mlflow_run_id": result.run_id}
    metrics = args.metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    acc = f", samples classified as their class {scores['sample_class_acc']:.0%} (chance {scores['chance']:.0%})" \
        if "sample_class_acc" in scores else ""
    print(f"usam/{name}: val bit accuracy {scores['val_bit_acc']:.3f}{acc}")


if __name__ == "__main__":
    main()
