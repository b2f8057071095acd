"""DVC stage `tokenizer`: train the spacetime tokenizer of one dataset through the harness.

Writes models/tokenizer/<name>/tokenizer.pt (+ test reconstruction panels) and
metrics/tokenizer/<name>.json (test PSNR/SSIM/perceptual/flicker, PSNR per scale prefix,
bit usage, weights sha256, training time, MLflow run id).
"""

from __future__ import annotations

import json
import shutil

from pipelines import DATASET, parse_stage, record_weights
from usam.errors import main_guard
from usam.eval.tokenizer import score_tokenizer
from usam.files import atomic_dir
from usam.track import client_for
from usam.train import fit, with_dataset
from usam.train.tasks import make_task


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, layout = parse_stage(__doc__, argv, DATASET, {
        "evaluators": (lambda layout, a: layout.evaluators(a.name), "the evaluators (the perceptual loss's network)"),
        "out": (lambda layout, a: layout.tokenizer_dir(a.name), "the tokenizer's folder"),
        "metrics": (lambda layout, a: layout.tokenizer_metrics(a.name), "the metrics JSON")})
    name, out = args.name, args.out
    cfg = with_dataset(cfg, name)
    inputs = layout.inputs(cfg, evaluators=args.evaluators)
    with atomic_dir(out) as tmp:
        result = fit(cfg, "tokenizer", root=root, out_dir=tmp / ".fit", run_name=f"tokenizer/{name}", inputs=inputs)
        shutil.move(result.weights_path, tmp / "tokenizer.pt")
        shutil.rmtree(tmp / ".fit")
        task = make_task("tokenizer", cfg, layout, inputs)
        scores = score_tokenizer(task, tmp / "tokenizer.pt", "test", expected_sha256=result.weights_sha256,
                                 panels=tmp / "panels")
        run = client_for(cfg, root)
        for key, value in scores.items():
            run.log_metric(result.run_id, f"test/{key}", value)
        for panel in sorted((tmp / "panels").iterdir()):
            run.log_artifact(result.run_id, str(panel), "panels/test")
    record_weights(run, result.run_id, out / "tokenizer.pt", layout)
    report = {
        "test": scores, "perceptual": task.perceptual_label, "weights_sha256": result.weights_sha256,
        "train_seconds": round(result.train_seconds, 1), "mlflow_run_id": result.run_id,
    }
    metrics = args.metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"tokenizer/{name}: test PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}, "
          f"{task.perceptual_label or 'perceptual'} {scores.get(task.perceptual_label, float('nan')):.4f}")


if __name__ == "__main__":
    main()
