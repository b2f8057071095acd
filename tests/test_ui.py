"""`usam ui` serves the configured store; a tracked run can log through that server as a remote."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import venv_env

from usam.config import compose
from usam.track import client_for, tracked_run

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def ui(project):
    """`usam ui` on a free loopback port over the project's sqlite store; stopped with its children."""
    port = _free_port()
    proc = subprocess.Popen(
        ["usam", "ui", "--port", str(port)], cwd=project, env=venv_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"usam ui did not come up:\n{proc.stdout.read() if proc.poll() is not None else ''}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_ui_serves_runs_from_the_embedded_store_and_accepts_remote_logging(project, ui):
    local_cfg = compose()
    with tracked_run(local_cfg, stage="local", run_name="logged-locally", root=project) as local_run:
        local_run.log_metrics({"psnr": 21.5}, step=1)

    found = _post(ui + "/api/2.0/mlflow/runs/search", {"experiment_ids": ["1"], "max_results": 10})
    by_name = {r["info"]["run_name"]: r for r in found["runs"]}
    assert by_name["logged-locally"]["data"]["metrics"][0]["value"] == 21.5
    assert urllib.request.urlopen(ui + "/", timeout=10).status == 200  # the UI page itself

    remote_cfg = compose([f"tracking.uri={ui}"])
    with tracked_run(remote_cfg, stage="remote", run_name="logged-remotely", root=project) as remote_run:
        remote_run.log_metrics({"loss": 0.25}, step=2)
    # it went through the server into the same sqlite file
    record = client_for(local_cfg, project).get_run(remote_run.run_id)
    assert record.data.metrics == {"loss": 0.25}
    assert record.data.tags["usam.stage"] == "remote"
