"""environment.lock and `usam env check`."""

from __future__ import annotations

import pytest
import tomllib
from conftest import REPO, run

from usam.errors import UsamError
from usam.repro.environment import Drift, compare, read_lock
from usam.track.provenance import installed_packages, normalize_name


def test_the_lock_pins_every_package_with_a_hash_and_covers_pyproject():
    text = (REPO / "environment.lock").read_text()
    pins = read_lock(REPO / "environment.lock")
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = requirements["dependencies"] + requirements["optional-dependencies"]["dev"]
    for spec in declared:
        name = normalize_name(spec.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip())
        assert name in pins, f"{name} is declared in pyproject.toml but not locked: run `make lock`"
    assert "usam-lab" not in pins
    assert text.count("--hash=sha256:") == len(pins)


def test_read_lock_parses_hashes_comments_extras_and_markers(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text(
        "# header\n"
        "Foo_Bar==1.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
        "ray[tune]==2.60.0 ; python_version >= '3.10'\n"
        "\n"
    )
    assert read_lock(lock) == {"foo-bar": "1.0", "ray": "2.60.0"}
    lock.write_text("numpy>=2\n")
    with pytest.raises(UsamError, match="not pinned with =="):
        read_lock(lock)
    with pytest.raises(UsamError, match="make lock"):
        read_lock(tmp_path / "absent")


def test_compare_lists_missing_extra_and_version_drift():
    locked = {"a": "1.0", "b": "2.0", "c": "3.0"}
    installed = {"a": "1.0.0", "b": "2.1", "d": "4.0", "pip": "26.0", "usam-lab": "0.1.0"}
    assert compare(locked, installed) == [
        Drift("b", "version", "2.0", "2.1"),
        Drift("c", "missing", "3.0", None),
        Drift("d", "extra", None, "4.0"),
    ]


def test_env_check_cli_reports_each_drift_of_the_real_environment(tmp_path):
    installed = installed_packages()
    installed.pop("usam-lab", None)
    exact = tmp_path / "exact.lock"
    exact.write_text("".join(f"{n}=={v}\n" for n, v in installed.items()))
    ok = run(["usam", "env", "check", "--lock", str(exact)], cwd=tmp_path)
    assert "environment matches" in ok.stdout

    drifted = dict(installed)
    dropped = "numpy"
    drifted.pop(dropped)
    drifted["torch"] = "0.0.1"
    drifted["not-a-real-package"] = "9.9"
    lock = tmp_path / "drift.lock"
    lock.write_text("".join(f"{n}=={v}\n" for n, v in drifted.items()))
    proc = run(["usam", "env", "check", "--lock", str(lock)], cwd=tmp_path, check=False)
    assert proc.returncode == 1
    lines = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert lines == sorted(
        [
            f"extra    numpy=={installed['numpy']} (installed, not in the lock)",
            "missing  not-a-real-package==9.9 (locked, not installed)",
            f"version  torch: locked 0.0.1, installed {installed['torch']}",
        ],
        key=lambda s: s.split()[1],
    )


def test_env_lock_checks_its_output_path_before_resolving(tmp_path):
    proc = run(["usam", "env", "lock", "--project", str(REPO), "-o", str(tmp_path / "nodir" / "environment.lock")],
               cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot write {tmp_path / 'nodir' / 'environment.lock'}: its folder {tmp_path / 'nodir'} does not exist" \
        in proc.stderr
    assert not (tmp_path / "nodir").exists()
