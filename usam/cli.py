"""`usam`: the command line. Thin: parse, validate, dispatch; the work lives in the library.

Every command that takes a config accepts Hydra-style overrides after its options,
e.g. ``usam config show train.lr=2e-4 data=bouncing_shapes``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from usam.errors import UsamError

EPILOG = """\
The main job is `dvc repro` (see README). Config overrides use Hydra syntax:
  key=value          change a value            e.g. train.lr=2e-4
  group=option       pick a group option       e.g. data=bouncing_shapes
Run `usam config schema` for every key, its type and its allowed range.
"""


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (Hydra syntax)")


def _config(args):
    from usam.config import compose, load_params

    if getattr(args, "params", None):
        if args.overrides:
            raise UsamError(
                "--params and overrides cannot be combined",
                where=f"--params {args.params}",
                fix="edit the file, or drop --params to compose from the tree with overrides",
            )
        return load_params(args.params)
    return compose(args.overrides)


def cmd_config_show(args) -> int:
    from usam.config import config_hash, to_yaml

    cfg = _config(args)
    print(to_yaml(cfg), end="")
    print(f"# config hash: {config_hash(cfg)}")
    return 0


def cmd_config_schema(args) -> int:
    from usam.config.schema import Config
    from usam.config.validate import describe

    for key, tp, rng, doc in describe(Config):
        print(f"{key}: {tp}" + (f", {rng}" if rng else "") + (f"  # {doc}" if doc else ""))
    return 0


def cmd_config_write_params(args) -> int:
    from usam.config import write_params

    write_params(args.output, args.overrides)
    print(f"wrote {args.output}")
    return 0


def cmd_env_check(args) -> int:
    from usam.repro.environment import check

    drifts = check(Path(args.lock))
    if not drifts:
        print(f"environment matches {args.lock}")
        return 0
    print(f"{len(drifts)} difference(s) between this environment and {args.lock}:")
    for d in drifts:
        print(f"  {d}")
    print("fix: `make setup` reinstalls the locked environment; `make lock` re-locks after a deliberate change")
    return 1


def cmd_env_lock(args) -> int:
    from usam.repro.environment import lock

    n = lock(Path(args.project), Path(args.output))
    print(f"wrote {args.output}: {n} packages pinned with sha256 hashes")
    return 0


def cmd_data_build(args) -> int:
    from usam.data import build_dataset, preprocess_dataset
    from usam.paths import find_project_root, resolve

    cfg = _config(args)
    root = find_project_root()
    for name in args.names or cfg.data.build:
        raw = resolve(cfg.data.root, root) / "raw" / name
        card = build_dataset(cfg, name, raw)
        print(f"{name}: " + ", ".join(f"{s} {v['count']}" for s, v in card["splits"].items()) + f" -> {raw}")
        if not args.raw_only:
            prepared = resolve(cfg.data.root, root) / "prepared" / name
            preprocess_dataset(cfg, raw, prepared)
            print(f"{name}: preprocessed -> {prepared}")
    return 0


def cmd_data_verify(args) -> int:
    from usam.data import verify_dataset
    from usam.paths import find_project_root, resolve

    cfg = _config(args)
    root = find_project_root()
    for name in args.names or cfg.data.build:
        for stage in ("raw", "prepared"):
            folder = resolve(cfg.data.root, root) / stage / name
            verify_dataset(folder)
            print(f"ok  {folder}")
    return 0


def cmd_train(args) -> int:
    import dataclasses

    from usam.train import fit

    cfg = _config(args)
    if args.address:
        cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, address=args.address))
    result = fit(cfg, args.task, out_dir=args.out, resume_run_id=args.resume)
    print(f"run {result.run_id} (Ray run {result.ray_run_name}) finished in {result.train_seconds:.0f}s")
    print(f"weights {result.weights_path}  sha256 {result.weights_sha256}")
    shown = {k: round(v, 4) for k, v in result.metrics.items() if k not in ("step", "epoch")}
    print(f"step {result.metrics.get('step')} epoch {result.metrics.get('epoch')} " + " ".join(f"{k} {v}" for k, v in shown.items()))
    return 0


def cmd_ui(args) -> int:
    from usam.paths import find_project_root
    from usam.track import artifact_root, tracking_uri

    cfg = _config(args)
    root = find_project_root()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri(cfg, root),
        "--default-artifact-root", artifact_root(cfg, root),
        "--host", args.host, "--port", str(args.port),
    ]
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    from usam import __version__

    parser = argparse.ArgumentParser(
        prog="usam",
        description="USAM Lab: train, sweep, ablate, track and replicate spacetime autoregressive video models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"usam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = sub.add_parser("config", help="show, check and write the configuration")
    config_sub = config.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    show = config_sub.add_parser("show", help="print the resolved, validated config (and its hash)")
    show.add_argument("--params", metavar="FILE", help="validate and show this composed file (e.g. params.yaml)")
    _add_overrides(show)
    show.set_defaults(fn=cmd_config_show)
    schema = config_sub.add_parser("schema", help="list every key with its type, range and meaning")
    schema.set_defaults(fn=cmd_config_schema)
    write = config_sub.add_parser("write-params", help="write the composed config to params.yaml (DVC's input)")
    write.add_argument("-o", "--output", default="params.yaml")
    _add_overrides(write)
    write.set_defaults(fn=cmd_config_write_params)

    env = sub.add_parser("env", help="the pinned environment: check drift, re-lock")
    env_sub = env.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    check = env_sub.add_parser("check", help="list every package that differs from the lock (exit 1 on drift)")
    check.add_argument("--lock", default="environment.lock")
    check.set_defaults(fn=cmd_env_check)
    lock = env_sub.add_parser("lock", help="resolve pyproject.toml with pip and write the hashed lock")
    lock.add_argument("--project", default=".")
    lock.add_argument("-o", "--output", default="environment.lock")
    lock.set_defaults(fn=cmd_env_lock)

    data = sub.add_parser("data", help="build and verify datasets (the same code as the DVC stages)")
    data_sub = data.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    build = data_sub.add_parser("build", help="generate/ingest datasets, then preprocess them")
    build.add_argument("--name", dest="names", action="append", help="dataset to build (default: data.build)")
    build.add_argument("--raw-only", action="store_true", help="skip preprocessing")
    build.add_argument("--params", metavar="FILE", help="read this composed config instead of the tree")
    _add_overrides(build)
    build.set_defaults(fn=cmd_data_build)
    verify = data_sub.add_parser("verify", help="recompute every data file's sha256 against its manifest")
    verify.add_argument("--name", dest="names", action="append")
    verify.add_argument("--params", metavar="FILE")
    _add_overrides(verify)
    verify.set_defaults(fn=cmd_data_verify)

    from usam.train.tasks import TASKS

    train = sub.add_parser(
        "train", help="train a model on Ray Train (DDP), tracked in MLflow",
        description="Train TASK with the validated config. Examples:\n"
        "  usam train evaluator_clip data.name=bouncing_shapes evaluator.train.workers=2\n"
        "  usam train evaluator_frame --resume <mlflow-run-id>    # continue an interrupted run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("task", choices=TASKS, help="what to train")
    train.add_argument("--resume", metavar="RUN_ID", help="continue this interrupted run from its last checkpoint")
    train.add_argument("--address", help="join this Ray cluster (overrides ray.address), e.g. auto or ray://head:10001")
    train.add_argument("--out", type=Path, help="folder for the final weights (default: inside the Ray run folder)")
    train.add_argument("--params", metavar="FILE", help="read this composed config instead of the tree")
    _add_overrides(train)
    train.set_defaults(fn=cmd_train)

    ui = sub.add_parser("ui", help="open the MLflow UI over the configured store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--params", metavar="FILE")
    _add_overrides(ui)
    ui.set_defaults(fn=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    try:
        return args.fn(args)
    except UsamError as exc:
        print(f"usam: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `usam ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
