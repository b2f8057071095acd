"""DVC stage `evaluate`: score one trained generator (USAM or a baseline, one seed) on one dataset's test split.

Samples ``eval.num_samples`` videos (classes in turn, the run seed as sampling seed) at the sampling
settings the `select` stage chose on val, and measures, against the dataset's test split and with its
domain evaluators:

* fidelity: FID / IS / KID / precision / recall on frames and FVD / KVD on clips (domain
  features, labelled ``*_domain``; Inception FID/IS only with a local ``eval.inception_weights``),
  beside the real-vs-real floor (test vs train);
* class accuracy of the samples (frame evaluator), diversity (mean pairwise perceptual distance
  between samples of the same class: ``lpips_alex`` with local weights, else ``domain_perceptual``);
* temporal coherence: motion-compensated flicker and warping error (Farneback flow, occlusion-masked),
  feature consistency, and VBench's raw-frame flicker for reference, for the samples and the real videos;
  and how later frames agree with the first (``frame0_l1``, ``frame0_class_agreement``: what next-clip
  conditioning moves);
* cost: warm latency per video at batch 1 and batch ``eval.batch_size`` (median of repeats),
  parameters, FLOPs per sample, training time and peak memory from the training run;
* transfer: the same samples against the other dataset's test split and evaluators.

Writes metrics/eval/<model>/<name>/seed<k>.json (the scores, flat, for `dvc metrics show/diff`, and
``record``: sampler settings, sample count and sampling seed, the evaluators' and generator's sha256, the
test split's content hash, the code commit and the training run), a training-curve CSV and a frame
strip of samples beside real videos under eval/<model>/<name>/seed<k>/, and logs the scores
(``eval/...``) and the record (tag ``eval.record``) to the generator's training run.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from pipelines import SEED, parse_stage
from usam.artifacts.loaders import load_evaluator
from usam.artifacts.sampling import classify_frames
from usam.data import VideoDataset
from usam.errors import UsamError, main_guard
from usam.eval.cost import flops_of, median_latency, training_record
from usam.eval.fidelity import frames_of, inception_scores, register_domain_extractor, video_fidelity
from usam.eval.first_frame import first_frame_agreement
from usam.eval.generators import load_generator
from usam.eval.select import with_settings
from usam.eval.temporal import temporal_scores
from usam.files import atomic_dir, sha256_file
from usam.media.panels import save_png, strip_grid
from usam.media.perceptual import LpipsDistance, load_domain_distance
from usam.paths import resolve
from usam.track import client_for
from usam.track.provenance import git
from usam.train import with_dataset
from usam.train.tasks import BASELINES

MODELS = ("usam", *BASELINES)
TEMPORAL_VIDEOS = 48  # warping error runs optical flow per frame pair: a subset is enough for a stable mean


def real_videos(prepared, name: str, split: str, limit: int | None = None) -> torch.Tensor:
    """A split of the ``prepared`` datasets as (N, 3, T, H, W) uint8."""
    path = prepared / name / split / "videos.npy"
    if not path.is_file():
        raise UsamError(f"no prepared {split} split for {name!r}", where=str(path), fix=f"run `dvc repro preprocess@{name}`")
    videos = np.load(path, mmap_mode="r")
    videos = videos[:limit] if limit else videos
    return torch.from_numpy(np.array(videos)).permute(0, 4, 1, 2, 3)


def generator_weights(layout, model: str, name: str, seed: int, folder):
    """The weights the `usam` or `baseline` stage wrote in ``folder``, with the sha256 and run it recorded."""
    stage = f"usam@{name}-{seed}" if model == "usam" else f"baseline@{model}-{name}-{seed}"
    weights, report = layout.generator_weights(model, name, seed, folder), layout.generator_metrics(model, name, seed)
    if not report.is_file() or not weights.path.is_file():
        raise UsamError(f"{model} has not been trained on {name} with seed {seed}", where=str(weights.path),
                        fix=f"run `dvc repro {stage}`")
    return weights, json.loads(report.read_text()).get("mlflow_run_id")


def training_budget(layout, model: str, name: str, seed: int) -> dict[str, float]:
    """Optimizer steps and training FLOPs (forward + backward, FlopCounterMode) the training stage recorded."""
    report = json.loads(layout.generator_metrics(model, name, seed).read_text())
    return {k: report[k] for k in ("steps", "train_flops") if k in report}


def evaluation_record(layout, prepared, name: str, split: str, weights, run_id, frame, clip, num_samples: int,
                      sampling_seed: int) -> dict:
    """What a number needs to be reproduced: the reference split and its content hash, the sample count and
    sampling seed, the evaluators' and the generator's weights sha256, the code commit and the training run."""
    return {"reference_split": split, "reference_sha256": sha256_file(prepared / name / split / "videos.npy"),
            "num_samples": num_samples, "sampling_seed": sampling_seed, "weights_sha256": weights.sha256,
            "frame_evaluator_sha256": frame.sha256, **({"clip_evaluator_sha256": clip.sha256} if clip else {}),
            "code_commit": git(layout.root, "rev-parse", "HEAD") or "unknown", "mlflow_run_id": run_id}


def chosen_settings(layout, model: str, name: str, path) -> dict[str, str]:
    """The sampling settings the `select` stage chose on val for ``model`` (empty: it has no grid)."""
    if not path.is_file():
        raise UsamError(f"no sampling settings chosen for {model} on {name}", where=str(path),
                        fix=f"run `dvc repro select@{model}-{name}`")
    return json.loads(path.read_text())["chosen"]


def diversity(videos: torch.Tensor, classes: torch.Tensor, distance, per_class: int = 6) -> float:
    """Mean pairwise perceptual distance between first frames of samples of the same class."""
    values = []
    for c in classes.unique():
        frames = videos[classes == c][:per_class, :, 0].float()
        for i in range(len(frames)):
            for j in range(i + 1, len(frames)):
                values.append(float(distance(frames[i:i + 1], frames[j:j + 1])))
    return float(np.mean(values)) if values else float("nan")


def perceptual(cfg, root, frame, normalize: dict):

    if cfg.eval.lpips_weights:
        return LpipsDistance(resolve(cfg.eval.lpips_weights, root), cfg.eval.lpips_sha256)
    return load_domain_distance(frame.path, frame.sha256, normalize)


@main_guard
def main(argv: list[str] | None = None) -> None:
    args, root, cfg, layout = parse_stage(__doc__, argv, {
        "model": f"one of {', '.join(MODELS)}", "name": "dataset the model was trained on", **SEED}, {
        "weights": (lambda layout, a: layout.generator_dir(a.model, a.name, a.seed), "the trained model's folder"),
        "selection": (lambda layout, a: layout.selection(a.model, a.name), "the sampling settings chosen on val"),
        "prepared": (lambda layout, a: layout.prepared(), "the prepared datasets (its own and the transfer targets)"),
        "evaluators": (lambda layout, a: layout.evaluators(), "the evaluators of every dataset"),
        "out": (lambda layout, a: layout.eval(a.model, a.name, a.seed), "the sample strip and training curve"),
        "metrics": (lambda layout, a: layout.eval_metrics(a.model, a.name, a.seed), "the scores JSON")})
    if args.model not in MODELS:
        raise UsamError(f"unknown model {args.model!r}", where="pipelines.evaluate MODEL", fix=f"use one of {', '.join(MODELS)}")
    settings = chosen_settings(layout, args.model, args.name, args.selection)
    cfg = with_settings(with_dataset(cfg, args.name), settings)
    weights, run_id = generator_weights(layout, args.model, args.name, args.seed, args.weights)
    sha = weights.sha256
    gen = load_generator(args.model, cfg, layout, weights.path, sha)
    torch.set_num_threads(max(1, int(cfg.train.runtime.threads_per_worker)))
    normalize = gen.task.normalize
    n = cfg.eval.num_samples
    classes = torch.arange(n) % len(gen.class_names)
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "its only setting"
    print(f"evaluate {args.model}/{args.name} seed {args.seed}: sampling {n} videos at {shown} (chosen on val)")
    fake = gen.sample(classes, cfg.seed, batch_size=cfg.eval.batch_size)
    test = real_videos(args.prepared, args.name, "test")
    train = real_videos(args.prepared, args.name, "train", limit=len(test))
    kid = min(50, n, len(test))

    frame = layout.evaluator_weights(args.name, "frame", args.evaluators / args.name)
    clip = layout.evaluator_weights(args.name, "clip", args.evaluators / args.name)
    frame_ext = register_domain_extractor("frame", frame.path, frame.sha256, normalize)
    clip_ext = register_domain_extractor("clip", clip.path, clip.sha256, normalize)
    scores = video_fidelity(test, fake, frame_ext, clip_ext, kid_subset=kid)
    floor = video_fidelity(test, train, frame_ext, clip_ext, kid_subset=kid)
    scores.update({f"floor/{k}": v for k, v in floor.items() if k.split("_")[0] in ("fid", "fvd", "kid", "is")})
    if cfg.eval.inception_weights:

        scores.update(inception_scores(frames_of(test), frames_of(fake), resolve(cfg.eval.inception_weights, root),
                                       cfg.eval.inception_sha256, kid_subset=kid))

    predicted = classify_frames(fake, frame.path, frame.sha256, normalize)
    scores["class_acc"] = float((predicted == classes).float().mean())
    scores["chance"] = 1.0 / len(gen.class_names)
    distance = perceptual(cfg, root, frame, normalize)
    scores[f"diversity_{distance.label}"] = diversity(fake, classes, distance)
    frame_net, _ = load_evaluator("frame", frame.path, frame.sha256)
    scores.update(temporal_scores(fake[:TEMPORAL_VIDEOS], frame_net, normalize, ""))
    scores.update(temporal_scores(test[:TEMPORAL_VIDEOS], frame_net, normalize, "real/"))
    for prefix, videos in (("", fake), ("real/", test)):  # do later frames keep what the first frame shows?
        scores.update({f"{prefix}{k}": float(v.mean()) for k, v in first_frame_agreement(videos, frame_net, normalize).items()})

    one, batch = classes[:1], classes[: cfg.eval.batch_size]
    scores["latency_s_batch1"] = median_latency(lambda: gen.sample(one, cfg.seed), repeats=5)
    scores[f"latency_s_per_video_batch{len(batch)}"] = median_latency(lambda: gen.sample(batch, cfg.seed), repeats=3) / len(batch)
    scores["parameters"] = gen.parameters
    scores["flops_per_sample"] = flops_of(lambda: gen.sample(one, cfg.seed))

    client = client_for(cfg, root)
    if run_id:
        scores.update(training_record(client, run_id))
    scores.update(training_budget(layout, args.model, args.name, args.seed))
    for other in cfg.data.build:
        if other == args.name or not layout.evaluator_metrics(other).is_file():
            continue
        other_test = real_videos(args.prepared, other, "test")
        if other_test.shape[1:] != fake.shape[1:]:
            continue
        of = layout.evaluator_weights(other, "frame", args.evaluators / other)
        oc = layout.evaluator_weights(other, "clip", args.evaluators / other)
        o_norm = VideoDataset(args.prepared / other / "val", cfg.preprocess, train=False, seed=cfg.seed).stats
        transfer = video_fidelity(other_test, fake, register_domain_extractor("frame", of.path, of.sha256, o_norm),
                                  register_domain_extractor("clip", oc.path, oc.sha256, o_norm), kid_subset=kid)
        scores.update({f"transfer/{other}/{k}": v for k, v in transfer.items() if k in ("fid_domain", "fvd_domain")})

    out = args.out
    with atomic_dir(out) as tmp:
        per = 4
        rows = [v.transpose(0, 1).float() for v in fake[:per]]
        rows += [v.transpose(0, 1).float() / 255.0 for v in test[:per]]
        save_png(strip_grid(rows), tmp / "samples_vs_real.png")
        if run_id:
            _training_curve(client, run_id, tmp / "training_curve.csv")
    record = {**evaluation_record(layout, args.prepared, args.name, "test", weights, run_id, frame, clip, n, cfg.seed),
              "sampler": settings, "sampler_chosen_on": "val"}
    if run_id:
        client.log_batch(run_id, metrics=[_metric(f"eval/{k}", v) for k, v in scores.items() if np.isfinite(v)])
        client.log_artifact(run_id, str(out / "samples_vs_real.png"), "eval")
        client.set_tag(run_id, "eval.record", json.dumps(record, sort_keys=True)[:5000])
    report = {"model": args.model, "dataset": args.name, "seed": cfg.seed, "record": record,
              **{k: _round(v) for k, v in scores.items()}, "num_samples": n, "mlflow_run_id": run_id,
              "weights_sha256": sha}
    path = args.metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"{args.model}/{args.name}: FID-domain {scores['fid_domain']:.2f} (floor {scores['floor/fid_domain']:.2f}), "
          f"FVD-domain {scores['fvd_domain']:.2f}, class accuracy {scores['class_acc']:.0%}, "
          f"latency {scores['latency_s_batch1'] * 1000:.0f} ms/video")


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def _round(v):
    return round(float(v), 6) if isinstance(v, float) else v


def _training_curve(client, run_id: str, path) -> None:
    """Per-step training loss (and validation loss where logged) of the run, for `dvc plots`."""
    loss = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    val = {m.step: m.value for m in client.get_metric_history(run_id, "val/loss")}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "train_loss", "val_loss"])
        for step in sorted(loss):
            w.writerow([step, loss[step], val.get(step, "")])


if __name__ == "__main__":
    main()
