"""DVC stage `usam`: train the USAM transformer of one dataset, with one seed, on its tokenizer's token stream.

Writes models/usam/<name>/seed<k>/usam.pt, a sample grid per class (.../samples/: PNG, GIF, MP4)
and metrics/usam/<name>/seed<k>.json: teacher-forced val loss and bit accuracy, the
share of samples the frame evaluator assigns to the class they were generated for (with
chance level), weights sha256, parameters, training time, MLflow run id.
"""

from __future__ import annotations

import json
import shutil

from pipelines import DATASET, SEED, parse_stage, record_weights
from usam.errors import main_guard
from usam.eval.class_grid import class_grid
from usam.eval.generators import load_generator
from usam.eval.quality import quality_hooks
from usam.files import atomic_dir
from usam.track import client_for
from usam.train import fit, with_dataset
from usam.train.tasks import make_task


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, layout = parse_stage(__doc__, argv, {**DATASET, **SEED}, {
        "tokenizer": (lambda layout, a: layout.tokenizer_dir(a.name), "the tokenizer it trains on"),
        "evaluators": (lambda layout, a: layout.evaluators(a.name), "the evaluators that score its samples"),
        "out": (lambda layout, a: layout.generator_dir("usam", a.name, a.seed), "the model's folder"),
        "metrics": (lambda layout, a: layout.generator_metrics("usam", a.name, a.seed), "the metrics JSON")})
    name, out = args.name, args.out
    cfg = with_dataset(cfg, name)
    inputs = layout.inputs(cfg, tokenizers=args.tokenizer)
    task = make_task("usam", cfg, layout, inputs)
    task.check_data()
    client = client_for(cfg, root)
    with atomic_dir(out) as tmp:
        result = fit(cfg, "usam", root=root, out_dir=tmp / ".fit", run_name=f"usam/{name}/seed{args.seed}", inputs=inputs,
                     hooks=quality_hooks(cfg, layout, "usam", args.evaluators))
        shutil.move(result.weights_path, tmp / "usam.pt")
        shutil.rmtree(tmp / ".fit")
        gen = load_generator("usam", cfg, layout, tmp / "usam.pt", result.weights_sha256, inputs)
        scores = {"val_loss": result.metrics.get("val_loss"), "val_bit_acc": result.metrics.get("val_bit_acc"),
                  **class_grid(gen, cfg, tmp / "samples", client, result.run_id,
                               lambda: layout.evaluator_weights(name, "frame", args.evaluators))}
    record_weights(client, result.run_id, out / "usam.pt", layout)
    flops = gen.model.flops_per_sample(gen.task.tokenizer().quantizer)
    client.log_metric(result.run_id, "model/flops_per_sample", flops)
    report = {**scores, "weights_sha256": result.weights_sha256, "parameters": gen.parameters,
              "flops_per_sample": flops,
              "train_seconds": round(result.train_seconds, 1), "seed": args.seed,
              "steps": int(result.metrics.get("step", 0)), "train_flops": int(result.metrics.get("train_flops", 0)), "mlflow_run_id": result.run_id}
    metrics = args.metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    acc = f", samples classified as their class {scores['sample_class_acc']:.0%} (chance {scores['chance']:.0%})" \
        if "sample_class_acc" in scores else ""
    print(f"usam/{name}: val bit accuracy {scores['val_bit_acc']:.3f}{acc}")


if __name__ == "__main__":
    main()
