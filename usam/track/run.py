"""The one MLflow run context every stage, trainer and trial uses.

``tracked_run(cfg, stage=...)`` opens a run on the configured store and records, before
any work starts: the flattened resolved config as params, provenance tags (git commit,
dirty flag and code state, DVC hashes, seeds, command line, config hash), ``provenance.json`` and
``config.yaml`` as artifacts. Datasets are attached with :meth:`TrackedRun.log_dataset`.

It uses an explicit ``MlflowClient`` (no fluent global state), so several runs can be
open in one process and nothing leaks between tests, Ray workers or Tune trials.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from usam.config import Config, config_hash, flatten, to_dict, to_yaml
from usam.errors import Interrupted, UsamError
from usam.paths import find_project_root, resolve
from usam.track import provenance

MAX_PARAM_CHARS = 6000  # MLflow's limit for one param value
MAX_TAG_CHARS = 5000


def tracking_uri(cfg: Config, root: Path) -> str:
    """The configured URI, with sqlite paths made absolute (DVC and Ray change the cwd)."""
    uri = cfg.tracking.uri
    if uri is None:
        return f"sqlite:///{(root / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{resolve(uri[len('sqlite:///'):], root)}"
    return uri


def artifact_root(cfg: Config, root: Path) -> str:
    """Absolute artifact location for new experiments (a URI like s3://... is kept as is)."""
    location = cfg.tracking.artifact_root
    if location is None:
        return (root / "mlartifacts").resolve().as_uri()
    if "://" in location:
        return location
    return resolve(location, root).as_uri()


def client_for(cfg: Config, root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg, root))


def ensure_experiment(client, name: str, location: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


BATCH = 1000  # MLflow's limit of metrics in one log_batch
RETRIES = 3  # a busy store (sqlite locked by another writer) is tried again before the batch counts as failed


@dataclass
class TrackedRun:
    """A handle on one open MLflow run (a no-op when tracking is disabled).

    Metrics are sent asynchronously: :meth:`log_metrics` only queues them (a training step never waits on the
    store) and one background thread per run sends them in batches, in the order they were logged.
    :meth:`flush` waits until every queued metric is stored (and raises what the store raised); the run context
    flushes before it marks the run FINISHED, FAILED or KILLED."""

    client: Any
    run_id: str | None
    _queue: list = field(default_factory=list)  # Metric entities not yet handed to the sender, in logging order
    _busy: bool = False  # the sender holds a batch it has not stored yet
    _error: BaseException | None = None  # what the store raised; reported by the next flush
    _thread: threading.Thread | None = None
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _logged_upto: dict = field(default_factory=dict)  # key -> last step already in the store (a resumed run)

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Queue metrics for the background sender; returns at once. A metric whose step the store already holds
        for its key (a resumed run re-running the steps after its last checkpoint) is not logged twice."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), step or 0
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self._logged_upto.get(k, -1)]
        if not items:
            return
        with self._lock:
            self._queue.extend(items)
            if self._thread is None:
                self._thread = threading.Thread(target=self._send, name=f"mlflow-metrics-{self.run_id[:8]}",
                                                daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def skip_logged(self) -> None:
        """Remember, per metric, the last step the store holds, so a resumed run does not log those steps again."""
        if self.enabled:
            self._logged_upto = {m.key: m.step for m in self.client.get_run(self.run_id).data._metric_objs}

    def flush(self) -> None:
        """Wait until every queued metric is in the store; raise what the store raised while sending."""
        if not self.enabled:
            return
        with self._lock:
            while (self._queue or self._busy) and self._error is None:
                self._lock.wait()
            error, self._error = self._error, None
        if error is not None:
            raise UsamError(f"metrics of run {self.run_id} could not be stored: {error}",
                            where=provenance.redact(str(self.client.tracking_uri)),
                            fix="check the tracking store (disk space, a server that went down) and resume the run")

    def _send(self) -> None:
        """The sender: batches of queued metrics to the store, oldest first, until the process ends."""
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                self._busy = True
            try:
                for attempt in range(RETRIES):
                    try:
                        self.client.log_batch(self.run_id, metrics=batch)
                        break
                    except Exception:
                        if attempt == RETRIES - 1:
                            raise
                        time.sleep(0.2 * (attempt + 1))
            except Exception as exc:  # the rest cannot follow in order: dropped, and the next flush raises
                with self._lock:
                    self._error, self._queue = exc, []
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, _clip(str(v), MAX_TAG_CHARS)) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[start : start + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=1, sort_keys=True, default=str), artifact_file)

    def log_dataset(self, name: str, split: str, sha256: str, source: str | Path, card: Path | None = None) -> None:
        """Attach a dataset split as an MLflow input, identified by its content hash."""
        if not self.enabled:
            return
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        source_uri = Path(source).resolve().as_uri() if "://" not in str(source) else str(source)
        dataset = MetaDataset(LocalArtifactDatasetSource(source_uri), name=f"{name}/{split}", digest=sha256[:32])
        from mlflow.exceptions import MlflowException

        tags = [InputTag("mlflow.data.context", split), InputTag("sha256", sha256)]
        for attempt in range(3):  # runs logging the same dataset at once race to insert its row: a retry finds it
            try:
                self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])
                break
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))
        self.set_tags({f"data.{name}.{split}.sha256": sha256})
        if card is not None and Path(card).is_file():
            self.log_artifact(card, f"datasets/{name}")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


def _params(cfg: Config) -> dict[str, str]:
    return {k: _clip(provenance.redact(str(v)), MAX_PARAM_CHARS) for k, v in flatten(to_dict(cfg)).items()}


def _provenance_tags(prov: dict[str, Any], cfg: Config, stage: str) -> dict[str, Any]:
    git, dvc = prov["git"], prov["dvc"]
    tags = {
        "usam.stage": stage,
        "usam.config_hash": config_hash(cfg),
        "usam.command": prov["command"],
        "git.commit": git["commit"] or "unknown",
        "git.dirty": str(git["dirty"]).lower() if git["dirty"] is not None else "unknown",
        "git.code_state": git.get("code_state") or "unknown",
        "dvc.lock_sha256": dvc["sha256"] or "none",
        "env.lock_sha256": prov["software"]["lock_file_sha256"] or "none",
        "env.python": prov["software"]["python"],
        "env.torch": prov["software"]["torch"],
        "env.cuda": prov["software"]["cuda"] or "none",
        "hardware.cpu": prov["hardware"]["cpu_model"],
        "hardware.gpus": ",".join(g["name"] for g in prov["hardware"]["gpus"]) or "none",
        "mlflow.source.git.commit": git["commit"] or "",
    }
    deciding = provenance.deciding_paths(git)
    if deciding:  # the whole list is in provenance.json
        tags["git.code_changed"] = provenance.listing(deciding)
    tags.update({f"seed.{k}": v for k, v in prov["seeds"].items()})
    for entry in dvc["stages"].values():  # an out belongs to exactly one stage, so its path is the key
        for path, md5 in entry["outs"].items():
            tags["dvc.out." + tag_path(path)] = md5
    return tags


def tag_path(path: str) -> str:
    """A DVC out path as it appears in its ``dvc.out.<path>`` tag (MLflow tag keys allow only these characters)."""
    return re.sub(r"[^\w\-./: ]", "_", path)


@contextlib.contextmanager
def tracked_run(
    cfg: Config,
    *,
    stage: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    root: Path | None = None,
    tags: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[TrackedRun]:
    """Open a run with full provenance; mark it FAILED (and re-raise) if the body raises.

    ``resume_run_id`` reopens an interrupted run instead of creating one; its recorded
    config hash must equal ``cfg``'s, so a resumed run never mixes two configurations, and with a ``usam.task``
    in ``tags`` it must be an unfinished run of that task (:func:`resumable_run`).
    """
    root = (root or find_project_root()).resolve()
    if not cfg.tracking.enabled:
        yield TrackedRun(client=None, run_id=None)
        return
    client = client_for(cfg, root)
    try:
        _check_reachable(tracking_uri(cfg, root))
        experiment_id = ensure_experiment(client, cfg.tracking.experiment, artifact_root(cfg, root))
    except Exception as exc:
        raise UsamError(
            f"cannot reach the MLflow tracking store: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            where=provenance.redact(tracking_uri(cfg, root)),
            fix="start the server (or fix tracking.uri), or run with tracking.enabled=false",
        ) from None
    if resume_run_id is not None:
        handle = _reopen(client, resume_run_id, cfg, (tags or {}).get("usam.task"))
        with _terminate_on_exit(client, handle):
            yield handle
        return
    prov = provenance.capture(root, seeds={"seed": cfg.seed, "data.seed": cfg.data.seed})
    start_tags = {"mlflow.runName": run_name or stage}
    if parent_run_id:
        start_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name or stage, tags=start_tags)
    handle = TrackedRun(client=client, run_id=run.info.run_id)
    try:
        params = _params(cfg)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            client.log_batch(handle.run_id, params=items[start : start + 100])
        handle.set_tags({**_provenance_tags(prov, cfg, stage), **(tags or {})})
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "provenance.json").write_text(json.dumps(prov, indent=1, sort_keys=True, default=str))
            (Path(tmp) / "config.yaml").write_text(provenance.redact(to_yaml(cfg)))
            client.log_artifact(handle.run_id, str(Path(tmp) / "provenance.json"))
            client.log_artifact(handle.run_id, str(Path(tmp) / "config.yaml"))
    except BaseException:
        client.set_terminated(handle.run_id, status="FAILED")
        raise
    with _terminate_on_exit(client, handle):
        yield handle


@contextlib.contextmanager
def _terminate_on_exit(client, handle: TrackedRun) -> Iterator[None]:
    """FINISHED on success, KILLED on Ctrl-C or a stop (a scheduler ending a trial), FAILED otherwise; every
    queued metric is stored first."""
    try:
        yield
    except BaseException as exc:
        try:
            handle.flush()
        except UsamError as error:  # the run's own error is the one to raise; this one is said
            print(f"warning: {error}", file=sys.stderr, flush=True)
        stopped = isinstance(exc, SystemExit) and exc.code in (0, None)  # Ray/Tune stopping us (ASHA, Ctrl-C)
        killed = stopped or isinstance(exc, (KeyboardInterrupt, Interrupted))
        client.set_terminated(handle.run_id, status="KILLED" if killed else "FAILED")
        raise
    handle.flush()
    client.set_terminated(handle.run_id, status="FINISHED")


def _reopen(client, run_id: str, cfg: Config, task: str | None) -> TrackedRun:
    resumable_run(client, run_id, cfg, task)
    client.update_run(run_id, status="RUNNING")
    return TrackedRun(client=client, run_id=run_id)


def resumable_run(client, run_id: str, cfg: Config, task: str | None = None):
    """The recorded run ``run_id`` that ``cfg`` may continue; checked before anything starts, and nothing of the
    run is changed when it may not.

    It must exist and have been started with ``cfg`` (its config hash). With ``task`` (a training run, as
    ``usam train TASK --resume`` continues one): it must be a training run of that task, and not FINISHED (a
    finished run has nothing left to train; reopening it would rewrite its result)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UsamError(
            f"no run {run_id!r} in the tracking store", where=provenance.redact(client.tracking_uri),
            fix="copy the run id from `usam ui` or the output of the interrupted command",
        ) from None
    tags = run.data.tags
    if task is not None:
        if "ray.run_name" not in tags:
            raise UsamError(f"run {run_id} is not a training run (no ray.run_name tag)", where=f"run {run_id}",
                            fix="pass the id of a `usam train` run")
        recorded_task = tags.get("usam.task")
        if recorded_task != task:
            raise UsamError(
                f"run {run_id} trained task {recorded_task}, not {task}: it cannot be resumed as {task}",
                where=f"usam train {task} --resume {run_id}",
                fix=f"resume it with `usam train {recorded_task} --resume {run_id}`, or drop --resume to start a "
                    f"new {task} run",
            )
        if run.info.status == "FINISHED":
            raise UsamError(f"run {run_id} already finished; nothing to resume",
                            where=f"run {run_id} (status FINISHED)",
                            fix=f"start a new run: `usam train {task}` without --resume")
    recorded = tags.get("usam.config_hash")
    if recorded != config_hash(cfg):
        raise UsamError(
            f"run {run_id} was started with another configuration (config hash {recorded}, now {config_hash(cfg)})",
            where=f"run {run_id}",
            fix="resume with the same overrides as the original command (see its usam.command tag)",
        )
    return run


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the server answered; auth or routing is MLflow's business
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(getattr(exc, "reason", exc)) from None

