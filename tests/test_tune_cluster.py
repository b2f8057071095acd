"""Sweeps on more than a local Ray: a two-node ``ray.cluster_utils.Cluster``, and a sweep submitted with
``ray job submit`` to a head started by ``ray start --head`` on loopback; a cluster address that does not
answer fails before any trial."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import BIN, REPO, TINY, venv_env

from usam.config import compose
from usam.data import build_dataset, preprocess_dataset
from usam.errors import UsamError
from usam.tune.runner import sweep

pytestmark = pytest.mark.slow

EVAL = [o for o in TINY if o.startswith(("data.", "evaluator."))]


@pytest.fixture(scope="module", autouse=True)
def own_ray_address():
    """Joining a cluster sets RAY_ADDRESS in this process; later tests in the same worker must not inherit it."""
    saved = os.environ.get("RAY_ADDRESS")
    yield
    import ray

    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(TINY)
    build_dataset(cfg, "moving_digits", root / "data" / "raw" / "moving_digits")
    preprocess_dataset(cfg, root / "data" / "raw" / "moving_digits", root / "data" / "prepared" / "moving_digits")
    spec = root / "sweeps" / "two.yaml"
    spec.parent.mkdir()
    spec.write_text(yaml.safe_dump({
        "task": "evaluator_frame", "overrides": [*EVAL, "evaluator.train.max_steps=3"],
        "space": {"evaluator.train.lr": {"type": "grid", "values": [0.001, 0.003]}},
        "searcher": "grid", "trials": 2, "max_concurrent_trials": 2, "resources": {"cpus": 1}, "epochs": 1,
    }))
    return root


def _children(root: Path, study: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("usam")
    runs = client.search_runs([experiment.experiment_id], f"tags.`usam.study` = '{study}'")
    parent = next(r for r in runs if r.info.run_name == study)
    return parent, [r for r in runs if r is not parent]


def test_a_sweep_runs_on_a_two_node_cluster(project: Path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    # its own temp dir: a cluster recorded in the default one is what every address-less ray.init() on this
    # machine would join (other tests run beside this one)
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 128 * 2**20,
                                                            "temp_dir": temp})
    cluster.add_node(num_cpus=1, object_store_memory=128 * 2**20, temp_dir=temp)
    cluster.wait_for_nodes()
    try:
        table = sweep(project / "sweeps" / "two.yaml", root=project, address=cluster.address, progress=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        # two concurrent trials of 1 CPU each fit only because there are two 1-CPU nodes
        assert ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ["RAY_ADDRESS"] = "local"  # joining the cluster set it to the cluster, which is gone now
        shutil.rmtree(temp, ignore_errors=True)
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    assert sorted(table["evaluator.train.lr"].astype(float)) == [0.001, 0.003]
    study = sorted((project / "outputs" / "studies").iterdir(), key=lambda p: p.stat().st_mtime)[-1].name
    parent, children = _children(project, study)
    assert {c.info.run_id for c in children} == set(table["mlflow_run_id"])
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_sweep_submitted_with_ray_job_submit_to_a_loopback_head(project: Path):
    """`ray start --head --block` in its own session and temp dir (so no other Ray on this machine finds it),
    with token authentication, then `ray job submit` of `usam sweep ... --address auto`."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port, dash, agent = _free_port(), _free_port(), _free_port()  # other Rays here hold the default agent port
    # Ray's token authentication, as on a real cluster: the head and every client share the token
    env = venv_env(PYTHONPATH=str(REPO), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 90
        while time.time() < deadline:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], capture_output=True,
                                   text=True, env=env)
            if probe.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the loopback head never answered on {address}")
        entry = f"cd {project} && {sys.executable} -m usam.cli sweep sweeps/two.yaml --address auto"
        for _ in range(20):  # the dashboard answers before the node's job agent is ready to take a job
            job = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--", "bash", "-c", entry],
                                 capture_output=True, text=True, env=env, timeout=600)
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(3)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-4000:] + job.stderr[-2000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    name = next(line.split()[1].rstrip(":") for line in job.stdout.splitlines() if line.startswith("sweep sweep-"))
    table = pd.read_csv(project / "outputs" / "studies" / name / "trials.csv")
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    parent, children = _children(project, name)
    assert len(children) == 2 and parent.info.status == "FINISHED"
    assert json.loads(json.dumps(parent.data.tags))["usam.study.kind"] == "sweep"


def test_a_cluster_address_that_does_not_answer_fails_before_any_trial(project: Path):
    import ray

    ray.shutdown()
    with pytest.raises(UsamError, match="cannot join the Ray cluster"):
        sweep(project / "sweeps" / "two.yaml", root=project, address=f"127.0.0.1:{_free_port()}")
    assert not (project / "outputs" / "studies").exists() or all(
        (p / "trials.csv").exists() for p in (project / "outputs" / "studies").iterdir())
