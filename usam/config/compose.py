"""Compose the Hydra tree (or read ``params.yaml``), then validate against the schema.

Two entry points, one result: :func:`compose` for the CLI (defaults + overrides) and
:func:`load_params` for DVC stages, which must read ``params.yaml`` because
``dvc exp run -S`` composes the tree itself and writes that file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import yaml

from usam.config.schema import Config
from usam.config.validate import RETIRED, build
from usam.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONFIG_NAME = "config"


def compose_dict(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The composed tree as plain data (no validation). Hydra errors become ConfigErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=overrides)
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot apply overrides {overrides}: {message}{_suggestions(overrides)}",
            where="command-line overrides",
            fix="use key=value for an existing key (`usam config schema` lists them), "
            "group=option to pick a group option (e.g. data=bouncing_shapes)",
        ) from None


def _suggestions(overrides: Sequence[str]) -> str:
    """Did-you-mean hints for unknown keys and unknown group options."""
    import difflib

    known = set(flatten(compose_dict()))
    groups = {d.name: sorted(p.stem for p in d.glob("*.yaml") if p.stem != "base") for d in CONF_DIR.iterdir() if d.is_dir()}
    hints = []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in RETIRED:
            hints.append(f"{key} is retired; {RETIRED[key]}")
        elif key in groups and value not in groups[key]:
            hints.append(f"{key} options are: {', '.join(groups[key])}")
        elif key not in known and key not in groups:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    return "".join(f"\n  - {h}" for h in hints)


def compose(overrides: Sequence[str] = ()) -> Config:
    """Defaults from the tree, plus ``overrides``, validated."""
    data = compose_dict(overrides)
    source = "config tree usam/conf" + (f" with overrides {list(overrides)}" if overrides else "")
    return build(Config, data, source=source)


def load_params(path: str | Path = "params.yaml") -> Config:
    """Read and validate a composed config file (the DVC stages' input)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} not found",
            where=str(path.resolve()),
            fix="run from the project root, or write it with `usam config write-params`",
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", where=str(path), fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping", where=str(path), fix="regenerate with `usam config write-params`")
    return build(Config, data, source=str(path))


def to_dict(cfg: Config) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}: the form MLflow params and DVC `-S` use."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def config_hash(cfg: Config) -> str:
    """sha256 of the canonical JSON of the resolved config: equal configs, equal hashes."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_params(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Config:
    """Write the composed default as ``params.yaml`` (what DVC's Hydra composition also writes)."""
    cfg = compose(overrides)
    header = "# Generated by `usam config write-params` from usam/conf; edit the tree, not this file.\n"
    Path(path).write_text(header + to_yaml(cfg))
    return cfg
