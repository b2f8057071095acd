"""Sweep efficiency, measured side by side in one run on a throwaway project (small moving digits).

1. Orchestration overhead per trial: the wall time of a Tune sweep of N trials minus the time the
   trials spent training (each trial's own ``train_seconds``: data, model, the training loop), divided
   by N. This is what Tune, the searcher, the trial actors, MLflow nesting, the weights export and the
   result table add to each trial (goal <= 2 s). For scale, the same trainings as plain ``fit()`` calls
   (each on its own Ray Train worker group) are timed beside it.
2. Search efficiency: the trial-epochs Optuna TPE + ASHA spends before its best trial comes within
   2% of the best result of the full grid, against the full grid's trial-epochs (goal <= 1/3).

    python benchmarks/sweep_efficiency.py               # about 10 minutes on 2 cores
    python benchmarks/sweep_efficiency.py --grid-lr 4 --grid-wd 2 --tpe-trials 8 --searcher-seeds 0
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import yaml

DATA = ["data.num_videos.train=384", "data.num_videos.val=32", "data.num_videos.test=8", "evaluator.frame.width=8",
        "evaluator.train.batch_size=16", "evaluator.train.warmup_steps=2", "evaluator.train.runtime.cpus_per_worker=1",
        "evaluator.train.runtime.threads_per_worker=2", "evaluator.train.runtime.log_every=100"]


def _project(root: Path) -> None:
    from usam.config import compose
    from usam.data import build_dataset, preprocess_dataset

    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(DATA)
    build_dataset(cfg, "moving_digits", root / "data" / "raw" / "moving_digits")
    preprocess_dataset(cfg, root / "data" / "raw" / "moving_digits", root / "data" / "prepared" / "moving_digits")


def _spec(root: Path, name: str, body: dict) -> Path:
    path = root / "sweeps" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({"task": "evaluator_frame", "overrides": DATA, "resources": {"cpus": 2}, **body}))
    return path


def overhead(root: Path, trials: int, epochs: int) -> dict:
    from usam.config import compose
    from usam.train import fit
    from usam.tune.runner import sweep

    lrs = [round(1e-3 * (i + 1), 6) for i in range(trials)]
    spec = _spec(root, "overhead", {"space": {"evaluator.train.lr": {"type": "grid", "values": lrs}},
                                    "searcher": "grid", "trials": trials, "epochs": epochs})
    start = time.perf_counter()
    table = sweep(spec, root=root, progress=False)
    total = time.perf_counter() - start
    training = [float(t) for t in table["train_s"]]
    inside = [float(d) for d in table["duration_s"]]  # each trial function, start to end (Tune's time_total_s)
    plain = []
    for lr in lrs:
        cfg = compose([*DATA, f"evaluator.train.lr={lr}", f"evaluator.train.epochs={epochs}"])
        begin = time.perf_counter()
        fit(cfg, "evaluator_frame", root=root, run_name=f"plain-{lr}")
        plain.append(time.perf_counter() - begin)
    return {"trials": trials, "sweep_s": round(total, 1), "trial_train_s_each": [round(t, 1) for t in training],
            "overhead_per_trial_s": round((total - sum(training)) / trials, 2),
            "of_which_inside_each_trial_s": round((sum(inside) - sum(training)) / trials, 2),
            "of_which_once_per_sweep_s": round(total - sum(inside), 1),
            "plain_fit_s_each": [round(p, 1) for p in plain],
            "sweep_per_trial_vs_plain_fit": round(total / sum(plain), 3), "goal_s": 2.0}


def search(root: Path, grid_lr: int, grid_wd: int, epochs: int, trials: int, seeds: list[int]) -> dict:
    from usam.tune.runner import sweep

    lrs = [float(f"{10 ** (-3.5 + 2.0 * i / (grid_lr - 1)):.3g}") for i in range(grid_lr)]
    wds = [float(f"{10 ** (-3 + 2.0 * i / max(grid_wd - 1, 1)):.3g}") for i in range(grid_wd)]
    grid = sweep(_spec(root, "grid", {
        "space": {"evaluator.train.lr": {"type": "grid", "values": lrs},
                  "evaluator.train.weight_decay": {"type": "grid", "values": wds}},
        "searcher": "grid", "trials": grid_lr * grid_wd, "epochs": epochs}), root=root, progress=False)
    best_grid = float(grid["best_val_loss"].min())
    grid_cost = float(grid["epochs"].sum())
    runs = []
    for seed in seeds:  # the searcher's seed decides its first (random) points: one figure per seed
        tpe = sweep(_spec(root, f"tpe_asha_{seed}", {
            "space": {"evaluator.train.lr": {"type": "loguniform", "low": min(lrs), "high": max(lrs)},
                      "evaluator.train.weight_decay": {"type": "loguniform", "low": min(wds), "high": max(wds)}},
            "searcher": "optuna", "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
            "trials": trials, "epochs": epochs, "searcher_seed": seed}), root=root, progress=False)
        spent, reached, best = 0.0, None, math.inf
        for _, row in tpe.iterrows():  # launch order; one trial at a time, so this is the order they ran
            spent += float(row["epochs"])
            best = min(best, float(row["best_val_loss"]))
            if reached is None and best <= best_grid * 1.02:
                reached = spent
        runs.append({"searcher_seed": seed, "trials": len(tpe), "trial_epochs_total": float(tpe["epochs"].sum()),
                     "best_val_loss": round(float(tpe["best_val_loss"].min()), 4),
                     "trial_epochs_to_within_2pct": reached,
                     "ratio_vs_grid": round(reached / grid_cost, 3) if reached is not None else None})
    ratios = [r["ratio_vs_grid"] for r in runs]
    return {"grid_points": len(grid), "grid_trial_epochs": grid_cost, "best_grid_val_loss": round(best_grid, 4),
            "tpe_asha": runs, "mean_ratio_vs_grid": round(sum(ratios) / len(ratios), 3) if None not in ratios else None,
            "worst_ratio_vs_grid": max(ratios) if None not in ratios else None, "goal_ratio": round(1 / 3, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="trials for the overhead measurement")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (the ASHA budget)")
    parser.add_argument("--grid-lr", type=int, default=6, help="learning rates in the grid (log-spaced)")
    parser.add_argument("--grid-wd", type=int, default=3, help="weight decays in the grid (log-spaced)")
    parser.add_argument("--tpe-trials", type=int, default=20, help="Optuna TPE + ASHA trials")
    parser.add_argument("--searcher-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one TPE + ASHA study per searcher seed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sweep_efficiency.json")
    args = parser.parse_args()
    import ray

    # the dashboard lets Ray Train clean up after a trial that ASHA stops (see usam.tune.runner._start_ray)
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", object_store_memory=256 * 2**20,
             log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="sweepbench") as tmp:
        root = Path(tmp)
        _project(root)
        result = {"overhead": overhead(root, args.trials, 1),
                  "search": search(root, args.grid_lr, args.grid_wd, args.epochs, args.tpe_trials,
                                   args.searcher_seeds)}
    ray.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    o, s = result["overhead"], result["search"]
    print(f"orchestration overhead per trial: {o['overhead_per_trial_s']:.2f} s (goal <= 2 s): sweep of {o['trials']} "
          f"trials {o['sweep_s']} s, their training {o['trial_train_s_each']} s; the same as plain fit() "
          f"{o['plain_fit_s_each']} s (sweep / plain = {o['sweep_per_trial_vs_plain_fit']})")
    print(f"  of which inside each trial (MLflow run, weights export, Tune reports): {o['of_which_inside_each_trial_s']} s; "
          f"outside the trials (Ray/Tune start, trial actor, parent run, table and plots): {o['of_which_once_per_sweep_s']} s "
          "per sweep")
    print(f"grid: {s['grid_points']} points x {args.epochs} epochs = {s['grid_trial_epochs']:.0f} trial-epochs, "
          f"best val_loss {s['best_grid_val_loss']}")
    for r in s["tpe_asha"]:
        print(f"TPE + ASHA, searcher seed {r['searcher_seed']}: {r['trials']} trials, {r['trial_epochs_total']:.0f} "
              f"trial-epochs, best {r['best_val_loss']}; within 2% of the grid's best after "
              f"{r['trial_epochs_to_within_2pct']} trial-epochs = {r['ratio_vs_grid']} of the grid")
    print(f"TPE + ASHA vs grid: mean {s['mean_ratio_vs_grid']}, worst {s['worst_ratio_vs_grid']} (goal <= 1/3)")

if __name__ == "__main__":
    main()
