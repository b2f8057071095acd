"""The tracking core against a real sqlite MLflow store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from usam.config import compose, config_hash, flatten, to_dict
from usam.errors import UsamError
from usam.track import client_for, tracked_run, tracking_uri
from usam.track.provenance import redact

SECRETS = ("s3cr3t-aws", "s3cr3t-token", "s3cr3t-pass")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(project: Path) -> Path:
    """The project as a git repository with one commit and a dvc.lock."""
    (project / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "data@moving_digits": {
                        "cmd": "python -m pipelines.data moving_digits",
                        "deps": [{"path": "pipelines/data.py", "md5": "1" * 32, "size": 10}],
                        "outs": [{"path": "data/raw/moving_digits", "md5": "2" * 32 + ".dir", "size": 5}],
                    }
                },
            }
        )
    )
    (project / "environment.lock").write_text("torch==2.14.1\n")
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return project


def _artifact_texts(client, run_id: str, path: str = "") -> dict[str, str]:
    texts = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            texts.update(_artifact_texts(client, run_id, info.path))
        else:
            local = client.download_artifacts(run_id, info.path)
            texts[info.path] = Path(local).read_text()
    return texts


def test_a_run_records_config_provenance_datasets_and_no_secrets(repo: Path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS[0])
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRETS[1])
    monkeypatch.setenv("RAY_ADDRESS", f"ray://alice:{SECRETS[2]}@head:10001")  # allowlisted, redacted
    cfg = compose(["seed=7", "data.seed=3"])
    card = repo / "CARD.md"
    card.write_text("# moving_digits card\n")
    with tracked_run(cfg, stage="demo", run_name="demo-run", root=repo) as run:
        run.log_metrics({"loss": 0.5}, step=3)
        run.log_dataset("moving_digits", "train", "f" * 64, repo, card=card)
    client = client_for(cfg, repo)
    record = client.get_run(run.run_id)

    assert record.info.status == "FINISHED" and record.info.run_name == "demo-run"
    assert tracking_uri(cfg, repo) == f"sqlite:///{repo / 'mlflow.db'}"
    assert (repo / "mlflow.db").is_file()
    # params: the flattened resolved config, value for value
    expected = {k: str(v) for k, v in flatten(to_dict(cfg)).items()}
    assert record.data.params == expected
    # tags: git, dvc, seeds, command, config hash
    tags = record.data.tags
    assert tags["git.commit"] == _git(repo, "rev-parse", "HEAD") and tags["git.dirty"] == "false"
    assert tags["git.code_state"] == "clean" and "git.code_changed" not in tags
    assert tags["dvc.out.data/raw/moving_digits"] == "2" * 32 + ".dir"
    assert tags["seed.seed"] == "7" and tags["seed.data.seed"] == "3"
    assert tags["usam.config_hash"] == config_hash(cfg)
    assert tags["usam.command"]
    assert tags["data.moving_digits.train.sha256"] == "f" * 64
    # metrics are batched but all arrive
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(3, 0.5)]
    # the dataset input with its hash
    (inp,) = record.inputs.dataset_inputs
    assert inp.dataset.name == "moving_digits/train" and inp.dataset.digest == "f" * 32
    assert {t.key: t.value for t in inp.tags}["sha256"] == "f" * 64
    # the environment artifact
    texts = _artifact_texts(client, run.run_id)
    prov = json.loads(texts["provenance.json"])
    import torch

    assert prov["software"]["torch"] == torch.__version__
    assert prov["software"]["packages"]["torch"] == torch.__version__.split("+")[0]
    assert prov["software"]["lock_file_sha256"] and prov["software"]["python"]
    assert {"cuda", "cudnn", "platform"} <= set(prov["software"])
    assert prov["hardware"]["cpu_count"] >= 1 and prov["hardware"]["cpu_model"]
    assert "deterministic_algorithms" in prov["determinism"]
    assert prov["git"]["commit"] == tags["git.commit"]
    assert (prov["git"]["code_state"], prov["git"]["code_changed"], prov["git"]["code_inputs"]) == ("clean", [], [])
    assert prov["dvc"]["stages"]["data@moving_digits"]["deps"] == {"pipelines/data.py": "1" * 32}
    assert yaml.safe_load(texts["config.yaml"]) == to_dict(cfg)
    assert texts["datasets/moving_digits/CARD.md"] == "# moving_digits card\n"
    # no secret anywhere: env only from the allowlist, URL credentials redacted
    stored = json.dumps(record.data.params) + json.dumps(tags) + "".join(texts.values())
    for secret in SECRETS:
        assert secret not in stored
    assert prov["environ"]["RAY_ADDRESS"] == "ray://***@head:10001"
    assert "AWS_SECRET_ACCESS_KEY" not in prov["environ"]


def test_dirty_tree_is_flagged(repo: Path):
    (repo / "environment.lock").write_text("torch==2.0\n")
    cfg = compose()
    with tracked_run(cfg, stage="demo", root=repo) as run:
        pass
    tags = client_for(cfg, repo).get_run(run.run_id).data.tags
    assert tags["git.dirty"] == "true"
    assert tags["git.code_state"] == "dirty" and tags["git.code_changed"] == "environment.lock"


def test_a_failing_body_marks_the_run_failed_and_reraises(project: Path):
    cfg = compose()
    with pytest.raises(RuntimeError, match="boom"):
        with tracked_run(cfg, stage="demo", root=project) as run:
            run.log_metrics({"x": 1.0}, step=0)
            raise RuntimeError("boom")
    record = client_for(cfg, project).get_run(run.run_id)
    assert record.info.status == "FAILED"
    assert record.data.metrics == {"x": 1.0}  # what was logged before the failure is kept


def test_relative_sqlite_uri_is_anchored_at_the_project_not_the_cwd(project: Path, monkeypatch):
    elsewhere = project / "sub" / "dir"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    cfg = compose(["tracking.uri=sqlite:///store/runs.db", "tracking.artifact_root=store/artifacts"])
    (project / "store").mkdir()
    with tracked_run(cfg, stage="demo", root=project) as run:
        pass
    assert (project / "store" / "runs.db").is_file()
    assert not (elsewhere / "store").exists()
    artifact_uri = client_for(cfg, project).get_run(run.run_id).info.artifact_uri
    assert artifact_uri.startswith((project / "store" / "artifacts").as_uri())


def test_disabled_tracking_writes_nothing(project: Path):
    with tracked_run(compose(["tracking.enabled=false"]), stage="demo", root=project) as run:
        run.log_metrics({"x": 1.0})
        run.log_dataset("moving_digits", "train", "0" * 64, project)
    assert not run.enabled
    assert not (project / "mlflow.db").exists()


def test_unreachable_server_is_one_clear_error_fast(project: Path):
    cfg = compose(["tracking.uri=http://127.0.0.1:9"])
    with pytest.raises(UsamError) as info:
        with tracked_run(cfg, stage="demo", root=project):
            pytest.fail("the body must not run without a store")
    assert "cannot reach the MLflow tracking store" in str(info.value)
    assert "http://127.0.0.1:9" in str(info.value) and "tracking.enabled=false" in str(info.value)


def test_redact_strips_url_credentials_only():
    assert redact("postgresql://u:p@db:5432/x and s3://bucket/k") == "postgresql://***@db:5432/x and s3://bucket/k"
