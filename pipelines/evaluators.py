"""DVC stage `evaluators`: train the frame and clip classifiers of one dataset through the harness.

Writes <models>/evaluators/<name>/{frame,clip}.pt and metrics/evaluators/<name>.json
(val/test accuracy, chance level, weights sha256, parameters, training time).
"""

from __future__ import annotations

import json
import shutil

from pipelines import DATASET, parse_stage, record_weights
from usam.errors import main_guard
from usam.eval.evaluators import accuracy
from usam.files import atomic_dir
from usam.track import client_for
from usam.train import fit, with_dataset
from usam.train.tasks import make_task


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, layout = parse_stage(__doc__, argv, DATASET, {
        "out": (lambda layout, a: layout.evaluators(a.name), "the evaluators' folder"),
        "metrics": (lambda layout, a: layout.evaluator_metrics(a.name), "the metrics JSON")})
    name, out = args.name, args.out
    cfg = with_dataset(cfg, name)
    report = {}
    with atomic_dir(out) as tmp:
        for kind in ("frame", "clip"):
            task_name = f"evaluator_{kind}"
            result = fit(cfg, task_name, root=root, out_dir=tmp / f".{kind}", run_name=f"evaluators/{name}/{kind}")
            shutil.move(result.weights_path, tmp / f"{kind}.pt")
            task = make_task(task_name, cfg, layout)
            scores = {s: accuracy(task, tmp / f"{kind}.pt", s, expected_sha256=result.weights_sha256) for s in ("val", "test")}
            shutil.rmtree(tmp / f".{kind}")
            client = client_for(cfg, root)
            for split, score in scores.items():
                client.log_metric(result.run_id, f"{split}/acc", score["acc"])
            report[kind] = {
                "val_acc": scores["val"]["acc"], "test_acc": scores["test"]["acc"], "chance": scores["test"]["chance"],
                "weights_sha256": result.weights_sha256, "train_seconds": round(result.train_seconds, 1),
                "mlflow_run_id": result.run_id,
            }
            print(f"evaluators/{name}/{kind}: test acc {scores['test']['acc']:.3f} (chance {scores['test']['chance']:.3f})")
    for kind, entry in report.items():
        record_weights(client, entry["mlflow_run_id"], out / f"{kind}.pt", layout)
    metrics = args.metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
