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


RUN_REF = "MLflow run id or name, or `latest` (the newest finished training run, in any experiment)"
TREE_PARAMS = "read this composed config instead of the tree"
TRACKING_PARAMS = "read the tracking settings from this composed file"
# the sampler's speed switches (usam.models.usam.MODULATIONS / PRECISIONS), named here so --help imports no torch
SAMPLER_MODULATIONS = ("per_token", "per_stage")
SAMPLER_PRECISIONS = ("fp32", "bf16")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (Hydra syntax)")


def _add_config_args(p: argparse.ArgumentParser, params_help: str | None = None) -> None:
    """The arguments every config-reading command ends with: ``--params FILE`` (a composed file read instead of
    the tree) and the overrides (which `_config` refuses to combine with it)."""
    p.add_argument("--params", metavar="FILE", help=params_help)
    _add_overrides(p)


def _command(sub, name: str, fn, help: str, description: str, run: str | None = None) -> argparse.ArgumentParser:
    """Subcommand ``name``, handled by ``fn``, whose description keeps its line breaks (its examples); with
    ``run``, its first argument is a recorded run (MLflow id, name or `latest`) described by that text."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if run is not None:
        p.add_argument("run", help=run)
    p.set_defaults(fn=fn)
    return p


def _at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (argparse names the flag in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}: give an integer >= {minimum}")
        return value

    return parse


def _seed(text: str) -> int:
    """An argparse type: a sampling seed, 0 <= seed < 2**63 (what torch.Generator takes)."""
    value = _at_least(0)(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"{value} is too large: give an integer below 2**63")
    return value


def _sampling_knob(name: str):
    """An argparse type: a finite number within the range ``model.sampling.<name>`` has in the schema (one range,
    in one place: the flag and the config agree)."""

    def parse(text: str) -> float:
        import math

        from usam.config.schema import SamplingConfig
        from usam.config.validate import knob_range

        try:
            value = float(text)
        except ValueError:
            value = math.nan
        fits, allowed = knob_range(SamplingConfig, name, value)
        if not (fits and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is not allowed: give a finite number {allowed} "
                                             f"(the range of model.sampling.{name})")
        return value

    return parse


def _context_ref(text: str) -> str:
    """An argparse type: ``SPLIT:INDEX`` of a dataset video (that the index exists is checked on the data)."""
    split, _, index = text.partition(":")
    if split not in ("train", "val", "test") or not index.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not SPLIT:INDEX (SPLIT train, val or test), e.g. test:0")
    return text


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
    from usam.paths import check_output_file

    check_output_file(args.output, "-o")  # before composing: a bad path fails first, not last
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
    from usam.paths import check_output_file
    from usam.repro.environment import lock

    check_output_file(args.output, "-o")  # before pip resolves anything
    n = lock(Path(args.project), Path(args.output))
    print(f"wrote {args.output}: {n} packages pinned with sha256 hashes")
    return 0


def cmd_data_build(args) -> int:
    from usam.artifacts.layout import Layout
    from usam.data import build_dataset, preprocess_dataset
    from usam.paths import find_project_root

    cfg = _config(args)
    layout = Layout.of(cfg, find_project_root())
    for name in args.names or cfg.data.build:
        raw = layout.raw(name)
        card = build_dataset(cfg, name, raw)
        print(f"{name}: " + ", ".join(f"{s} {v['count']}" for s, v in card["splits"].items()) + f" -> {raw}")
        if not args.raw_only:
            prepared = layout.prepared(name)
            preprocess_dataset(cfg, raw, prepared)
            print(f"{name}: preprocessed -> {prepared}")
    return 0


def cmd_data_verify(args) -> int:
    from usam.artifacts.layout import Layout
    from usam.data import verify_dataset
    from usam.paths import find_project_root

    cfg = _config(args)
    layout = Layout.of(cfg, find_project_root())
    for name in args.names or cfg.data.build:
        for folder in (layout.raw(name), layout.prepared(name)):
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


def cmd_study(args) -> int:
    from usam.tune.runner import ablate, sweep

    run = sweep if args.command == "sweep" else ablate
    table = run(args.spec, overrides=args.overrides, address=args.address, resume=args.resume)
    return 0 if (table["status"] != "failed").any() else 1


def cmd_report(args) -> int:
    from usam.artifacts.layout import Layout
    from usam.paths import find_project_root
    from usam.report.paper import write

    cfg = _config(args)
    for path in write(Layout.of(cfg, find_project_root()), cfg, audit_runs=not args.no_audit):
        print(f"wrote {path}")
    return 0


def cmd_claims(args) -> int:
    from usam.artifacts.layout import Layout
    from usam.config import load_params
    from usam.paths import find_project_root, resolve
    from usam.report.claims import evaluate, table_text, write

    root = find_project_root()
    layout = Layout(root, root)  # only paths under the project root are asked for: no config needed
    records = resolve(args.records, root) if args.records else layout.eval_metrics()
    params = root / "params.yaml"
    seeds = load_params(params).seeds if params.is_file() else None  # the pipeline's seeds, as its stage grades
    spec, graded = evaluate(resolve(args.spec, root), records, seeds)
    print(table_text(graded), end="")
    if args.out:
        for path in write(spec, graded, records, resolve(args.out, root), root=root):
            print(f"wrote {path}")
    if args.strict and any(g.grade != "reproduced" for g in graded):
        print("--strict: not every claim is reproduced", file=sys.stderr)
        return 1
    return 0


def cmd_sample(args) -> int:
    import dataclasses
    import time

    from usam.artifacts.layout import Layout
    from usam.artifacts.sampling import Sampler
    from usam.media.panels import write_grid
    from usam.paths import find_project_root, resolve
    from usam.track import client_for, tracking_uri
    from usam.track.provenance import redact
    from usam.track.runs import find_run

    cfg = _config(args)
    root = find_project_root()
    client = client_for(cfg, root)
    run = find_run(client, args.run, redact(tracking_uri(cfg, root)), task="usam")
    tags = run.data.tags
    if tags.get("usam.task") != "usam" or "checkpoint.path" not in tags:
        raise UsamError(f"run {run.info.run_id} is not a finished usam training run", where=f"run {args.run}",
                        fix="pass the id of a `usam train usam` run (or its stage's run)")
    sampler = Sampler.load(resolve(tags["checkpoint.path"], root), tags.get("checkpoint.sha256"), root)
    sampling = cfg.model.sampling
    changes = {k: v for k, v in (("cfg", args.cfg), ("top_p", args.top_p)) if v is not None}
    if args.temperature is not None:
        changes["temperature"] = [args.temperature]
    sampling = dataclasses.replace(sampling, **changes)
    context = None
    if args.context:
        context = _context_video(cfg, root, args.context)
    cond, forced, notes = sampler.conditions(args.num, klass=args.klass, action=args.action, text=args.text, context=context)
    for note in notes:
        print(f"note: {note}")
    videos = sampler.sample(cond, args.num, sampling, args.seed, forced, modulation=args.modulation,
                            precision=args.precision)
    out = args.out or Layout.of(cfg, root).outputs("samples", run.info.run_id, time.strftime("%Y%m%d-%H%M%S"))
    files = write_grid(videos, Path(out), "samples", mp4=True)
    for f in files:
        client.log_artifact(run.info.run_id, str(f), f"samples/{Path(out).name}")
    what = ", ".join(f"{k} {v!r}" for k, v in (("class", args.klass), ("action", args.action), ("text", args.text),
                                                   ("context", args.context)) if v is not None) or "unconditional"
    print(f"{args.num} videos ({what}; cfg {sampling.cfg}, seed {args.seed}) from run {run.info.run_id}:")
    for f in files:
        print(f"  {f}")
    return 0


def _context_video(cfg, root: Path, ref: str):
    """``SPLIT:INDEX`` of the configured dataset -> one normalized video (3, T, H, W)."""
    from usam.artifacts.layout import Layout
    from usam.data import VideoDataset

    split, _, index = ref.partition(":")  # its form was checked as the flag was parsed (_context_ref)
    data = VideoDataset(Layout.of(cfg, root).prepared(cfg.data.name) / split, cfg.preprocess,
                        train=False, seed=cfg.seed)
    if int(index) >= len(data):
        raise UsamError(f"{split} has {len(data)} videos, no index {index}", where="--context", fix="pick a smaller index")
    return data[int(index)]["video"].transpose(0, 1)


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


def cmd_audit(args) -> int:
    from usam.paths import check_output_file, find_project_root
    from usam.repro.audit import audit
    from usam.repro.render import render

    if args.output:
        check_output_file(args.output, "-o")  # before the run is looked up and audited (minutes with replays)
    report = audit(args.run, _config(args), find_project_root(), replay=not args.no_replay)
    text = render(report, args.format)
    if args.output:
        args.output.write_text(text)
        print(f"wrote {args.output}: {report.summary()}")
    else:
        print(text, end="")
    return 1 if report.failed else 0


def cmd_replicate(args) -> int:
    from usam.paths import find_project_root
    from usam.repro.replicate import replicate

    result, report = replicate(args.run, _config(args), find_project_root(), rtol=args.rtol, atol=args.atol,
                               out_dir=args.out)
    print(f"{result.verdict}: replica run {result.replica_id} of run {result.original_id}; report {report}")
    return 1 if result.failed else 0


def cmd_kit(args) -> int:
    from usam.paths import find_project_root
    from usam.repro.kit import build_kit

    manifest = build_kit(args.run, _config(args), find_project_root(), args.output, force=args.force)
    print(f"wrote the kit of run {manifest['run_id']} to {args.output} ({len(manifest['files'])} files); "
          f"rebuild with `bash {args.output}/COMMANDS.sh`")
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
    _add_config_args(show, "validate and show this composed file (e.g. params.yaml)")
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
    _add_config_args(build, TREE_PARAMS)
    build.set_defaults(fn=cmd_data_build)
    verify = data_sub.add_parser("verify", help="recompute every data file's sha256 against its manifest")
    verify.add_argument("--name", dest="names", action="append")
    _add_config_args(verify)
    verify.set_defaults(fn=cmd_data_verify)

    from usam.config.schema import TASK_NAMES as TASKS  # not usam.train.tasks: `--help` must not import torch

    train = _command(
        sub, "train", cmd_train, help="train a model on Ray Train (DDP), tracked in MLflow",
        description="Train TASK with the validated config. Examples:\n"
        "  usam train evaluator_clip data.name=bouncing_shapes evaluator.train.runtime.workers=2\n"
        "  usam train evaluator_frame --resume <mlflow-run-id>    # continue an interrupted run",
    )
    train.add_argument("task", choices=TASKS, help="what to train")
    train.add_argument("--resume", metavar="RUN_ID", help="continue this interrupted run from its last checkpoint")
    train.add_argument("--address", help="join this Ray cluster (overrides ray.address), e.g. auto or ray://head:10001")
    train.add_argument("--out", type=Path, help="folder for the final weights (default: inside the Ray run folder)")
    _add_config_args(train, TREE_PARAMS)

    for name, what, example in (
        ("sweep", "hyperparameter sweep on Ray Tune (Optuna TPE / CMA-ES, random or grid; ASHA)", "sweeps/lr_wd.yaml"),
        ("ablate", "ablation grid (variants x datasets x seeds) on Ray Tune, with statistics", "ablations/components.yaml"),
    ):
        study = _command(
            sub, name, cmd_study, help=what,
            description=f"Run a {what}. Every trial is a real training run, nested under one MLflow parent run;\n"
            "the trial table, best config and report land in outputs/studies/<study>/ and on the parent run.\n"
            f"Examples:\n  usam {name} {example}\n  usam {name} {example} --address auto      # on a running Ray cluster\n"
            f"  usam {name} {example} --resume latest    # continue the last interrupted {name}",
        )
        study.add_argument("spec", type=Path, help="the spec file (see sweeps/README.md and ablations/README.md)")
        study.add_argument("--address", help="join this Ray cluster, e.g. auto or ray://head:10001")
        study.add_argument("--resume", metavar="RUN_ID", nargs="?", const="latest",
                           help="continue an interrupted study: its parent run id or name (default: the latest)")
        _add_overrides(study)  # a study's trials take their config from the spec: no --params

    sample = _command(
        sub, "sample", cmd_sample,
        help="generate videos with a trained USAM model (GIF, MP4 and PNG grid, logged to its run)",
        description="Sample NUM videos from a USAM training run. Examples:\n"
        "  usam sample latest --class 3 --num 16\n"
        "  usam sample <run-id> --text 'digit 7 bouncing fast' --cfg 4 --seed 1\n"
        "  usam sample <run-id> --context test:0 --num 4      # continue a given first frame",
        run="MLflow run id or name of a `usam train usam` run, or `latest` (the newest finished usam training run, "
            "in any experiment)",
    )
    sample.add_argument("--class", dest="klass", metavar="NAME", help="class to generate (e.g. 3, or circle)")
    sample.add_argument("--action", metavar="NAME", help="action cue (bouncing_shapes), e.g. left+speed_up")
    sample.add_argument("--text", metavar="PROMPT", help="caption-style prompt; unknown words are read as unknown")
    # every flag is checked as it is parsed: a bad one is an argparse error naming it, before anything loads
    sample.add_argument("--context", metavar="SPLIT:INDEX", type=_context_ref,
                        help="continue the first frame of this dataset video")
    sample.add_argument("--num", type=_at_least(1), default=8, help="videos to generate (at least 1)")
    sample.add_argument("--seed", type=_seed, default=0, help="sampling seed (same seed, same videos)")
    sample.add_argument("--cfg", type=_sampling_knob("cfg"),
                        help="guidance scale (default: model.sampling.cfg; its range, see `usam config schema`)")
    sample.add_argument("--temperature", type=_sampling_knob("temperature"),
                        help="one temperature for every scale (0: the likelier bit, no sampling)")
    sample.add_argument("--top-p", type=_sampling_knob("top_p"), dest="top_p", help="nucleus threshold per bit")
    sample.add_argument("--modulation", choices=SAMPLER_MODULATIONS, default="per_token",
                        help="per_stage: each stage's condition once per sample, fewer FLOPs; per_token: as the "
                             "pipeline samples (the same seed gives the pipeline's bits)")
    sample.add_argument("--precision", choices=SAMPLER_PRECISIONS, default="fp32",
                        help="bf16: autocast for the matmuls (faster where the device has bf16 units)")
    sample.add_argument("--out", type=Path, help="output folder (default: outputs/samples/<run>/<time>)")
    _add_config_args(sample)

    report = _command(
        sub, "report", cmd_report,
        help="the paper-style report (Markdown + self-contained HTML) in reports/ (also the DVC stage)",
        description="Write reports/paper.md and reports/paper.html: the comparison table, samples, training curves,\n"
        "dataset cards, sweeps and ablations, and the audit of every model's training run.",
    )
    report.add_argument("--no-audit", action="store_true", help="leave the reproducibility audits out (faster)")
    _add_config_args(report, f"{TREE_PARAMS} (e.g. params.yaml)")

    claims = _command(
        sub, "claims", cmd_claims,
        help="grade the paper's claims (claims.yaml) from the per-seed evaluation records",
        description="Grade every claim of the spec from metrics/eval/ as reproduced, not reproduced or inconclusive,\n"
        "with its evidence (per-model mean and 95% CI, the difference or ratio with its Welch 95% CI, p, run ids).\n"
        "A bad spec is one error naming each claim and field. Examples:\n"
        "  usam claims                            # print the graded table\n"
        "  usam claims --strict                   # exit 1 unless every claim is reproduced\n"
        "  usam claims --out reports              # also write reports/claims.{json,md,html} (as the DVC stage does)",
    )
    claims.add_argument("--spec", default="claims.yaml", metavar="FILE", help="the claims spec (default: claims.yaml)")
    claims.add_argument("--records", metavar="DIR", help="the evaluation records (default: metrics/eval)")
    claims.add_argument("--out", metavar="DIR", help="also write claims.{json,md,html} into DIR")
    claims.add_argument("--strict", action="store_true", help="exit status 1 unless every claim is reproduced")

    ui = sub.add_parser("ui", help="open the MLflow UI over the configured store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    _add_config_args(ui)
    ui.set_defaults(fn=cmd_ui)

    audit = _command(
        sub, "audit", cmd_audit,
        help="check whether a recorded run can be reproduced (code, data, params, seeds, environment, ...)",
        description="Audit RUN against the project as it is now: each check says PASS, WARN or FAIL with its evidence.\n"
        "The metrics and rerun checks evaluate the final weights again and train a few steps twice, here, on CPU.\n"
        "Exit status 1 when a check fails. Examples:\n"
        "  usam audit latest                      # the newest finished training run\n"
        "  usam audit <run-id> --format html -o audit.html\n"
        "  usam audit <run-id> --no-replay        # seconds: leave out the metrics and rerun checks",
        run=RUN_REF,
    )
    audit.add_argument("--format", choices=("md", "html", "json"), default="md", help="report format (default: md)")
    audit.add_argument("--no-replay", action="store_true",
                       help="leave out the checks that evaluate or train here (metrics, rerun)")
    audit.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the report to FILE instead of stdout")
    _add_config_args(audit, TRACKING_PARAMS)

    replicate = _command(
        sub, "replicate", cmd_replicate,
        help="train a recorded run again (its commit, config, seeds and data) and compare the two",
        description="Replay RUN: its commit in a git worktree, its config.yaml and seeds, its data checked by the\n"
        "recorded DVC hashes; then compare final metrics and weights (sha256, tensor by tensor) and link the\n"
        "runs in MLflow. Exit status 1 when the replica differs beyond the tolerance. Examples:\n"
        "  usam replicate latest                  # exact on CPU\n"
        "  usam replicate <run-id> --rtol 1e-3    # a GPU run",
        run=RUN_REF,
    )
    replicate.add_argument("--rtol", type=float, default=0.0, help="relative tolerance on metrics (default: 0, exact)")
    replicate.add_argument("--atol", type=float, default=0.0, help="absolute tolerance on metrics and weights (default: 0)")
    replicate.add_argument("--out", type=Path, metavar="DIR",
                           help="folder for the replica's weights and the report (default: outputs/replicas/<run>-<time>)")
    _add_config_args(replicate, TRACKING_PARAMS)

    kit = _command(
        sub, "kit", cmd_kit,
        help="write a reproducibility kit of a recorded run: source, lock, config, data hashes, weights, commands",
        description="Write into DIR everything needed to rebuild RUN: the source at its commit (git archive),\n"
        "environment.lock, config.yaml (and params.yaml), the data manifest, the verified checkpoint, the audit\n"
        "and COMMANDS.sh. Example:\n  usam kit latest -o kits/frame-digits",
        run=RUN_REF,
    )
    kit.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="the kit folder (new or empty)")
    kit.add_argument("--force", action="store_true",
                     help="replace the contents of a non-empty DIR (never a place holding project work: DVC outputs, "
                          "git-tracked files, the tracking store, outputs/)")
    _add_config_args(kit, TRACKING_PARAMS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    # overrides may also follow the options (`usam audit RUN --format json a=1`): argparse leaves those over
    if extra and isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-")
                                                                            for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
