"""What keeps orchestration cheap: a cached `dvc repro` pays no telemetry and no pure-Python YAML parsing, a
one-worker stage trains with no Ray at all, and a sweep's trials import no driver-only modules."""

from __future__ import annotations

import configparser

from conftest import REPO


def test_dvc_sends_no_analytics_and_checks_no_updates():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["core"]["analytics"] == "false"  # each command would spawn a daemon that tries to reach the network
    assert config["core"]["check_update"] == "false"


def test_dvc_parses_yaml_with_the_c_parser():
    """dvc.lock and, once per stage, params.yaml: in pure Python that is about half of a cached `dvc repro`."""
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is not installed: run `make setup` (it is in environment.lock)"
    assert YAML(typ="safe").Parser is CParser  # what dvc.utils.serialize.parse_yaml builds
