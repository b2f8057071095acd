"""A small typed-schema validator for the composed config.

Why not Hydra structured configs: DVC composes our Hydra tree in its own process
(``dvc exp run -S``), where nothing from our package is registered, so the YAML tree
must stand alone. The YAML files therefore hold the defaults and these dataclasses
hold the types, ranges and choices; :func:`build` checks one against the other and
reports *every* problem at once, each naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from usam.errors import ConfigError

# Keys that no longer exist, and what to use instead: an old override or params.yaml gets this, not a guess.
RETIRED = {
    "model.name": "the task picks the model (`usam train usam`, the `usam` stage): drop model.name",
    **{f"{section}.{key}": f"use {section}.runtime.{key} (where a recipe runs lives apart from the recipe)"
       for section in ("train", "evaluator.train", "tokenizer.train")
       for key in ("workers", "use_gpu", "cpus_per_worker", "threads_per_worker", "backend", "dataloader_workers",
                   "deterministic", "grad_checkpointing", "checkpoint_every", "keep_checkpoints", "max_failures",
                   "log_every", "visuals_every")},
    **{f"{section}.{key}": f"use debug.{key} (chaos tests live in the debug group)"
       for section in ("train", "evaluator.train", "tokenizer.train")
       for key in ("fault_injection_step", "fault_injection_kind")},
}


def knob(
    *,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    min_len: int | None = None,
    doc: str = "",
) -> Any:
    """A schema field: its type comes from the annotation, its default from the YAML tree."""
    return dataclasses.field(metadata={"ge": ge, "le": le, "gt": gt, "lt": lt, "min_len": min_len, "doc": doc})


def _range_text(meta: dict) -> str:
    parts = []
    if meta.get("ge") is not None:
        parts.append(f">= {meta['ge']}")
    if meta.get("gt") is not None:
        parts.append(f"> {meta['gt']}")
    if meta.get("le") is not None:
        parts.append(f"<= {meta['le']}")
    if meta.get("lt") is not None:
        parts.append(f"< {meta['lt']}")
    return " and ".join(parts)


def knob_range(cls: type, name: str, value: float) -> tuple[bool, str]:
    """Whether the number ``value`` fits field ``name`` of schema class ``cls`` (NaN never does), and that field's
    range in words. For a flag that sets a knob: the flag and the config keep one range."""
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[name]
    problems = _Problems()
    _check_number(name, value, meta, problems)
    return not problems, _range_text(meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of str to {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(tp, str(tp))


class _Problems(list):
    def add(self, path: str, value: Any, expected: str) -> None:
        self.append(f"{path} = {value!r}: expected {expected}")


def _check_number(path: str, value: Any, meta: dict, problems: _Problems) -> None:
    ok = True
    if meta.get("ge") is not None and not value >= meta["ge"]:
        ok = False
    if meta.get("gt") is not None and not value > meta["gt"]:
        ok = False
    if meta.get("le") is not None and not value <= meta["le"]:
        ok = False
    if meta.get("lt") is not None and not value < meta["lt"]:
        ok = False
    if value != value:  # NaN passes no range and means nothing as a knob
        ok = False
    if not ok:
        problems.add(path, value, f"a value {_range_text(meta) or 'that is a number'}")


def _convert(path: str, value: Any, tp: Any, meta: dict, problems: _Problems) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.add(path, value, "a mapping")
            return None
        return _build(tp, value, path, problems)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            problems.add(path, value, _type_name(tp))
            return None
        inner = [a for a in args if a is not type(None)]
        trial = _Problems()
        out = _convert(path, value, inner[0], meta, trial) if len(inner) == 1 else None
        if len(inner) != 1:
            raise TypeError(f"schema union at {path} must be Optional[X]")
        problems.extend(trial)
        return out
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.add(path, value, "one of " + ", ".join(repr(a) for a in allowed) + extra)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.add(path, value, _type_name(tp))
            return None
        if meta.get("min_len") is not None and len(value) < meta["min_len"]:
            problems.add(path, value, f"a list of at least {meta['min_len']} item(s)")
        (item_tp,) = typing.get_args(tp)[:1]
        return [_convert(f"{path}[{i}]", v, item_tp, meta, problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.add(path, value, _type_name(tp))
            return None
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(f"{path}.{k}", v, val_tp, meta, problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, value, f"an integer{' ' + _range_text(meta) if _range_text(meta) else ''}")
            return value
        _check_number(path, value, meta, problems)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.add(path, value, f"a number{' ' + _range_text(meta) if _range_text(meta) else ''}")
            return value
        _check_number(path, float(value), meta, problems)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, value, "a string")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def _build(cls: type, data: dict, path: str, problems: _Problems) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if _join(path, key) in RETIRED:
            problems.append(f"{_join(path, key)}: retired key; {RETIRED[_join(path, key)]}")
        elif key not in fields:
            hint = _closest(str(key), list(fields))
            extra = f"; did you mean {_join(path, hint)!r}?" if hint else ""
            problems.append(f"{_join(path, key)}: unknown key{extra} (known keys: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name not in data:
            problems.append(f"{key_path}: missing (expected {_type_name(hints[name])})")
            kwargs[name] = None
            continue
        kwargs[name] = _convert(key_path, data[name], hints[name], dict(f.metadata), problems)
    obj = cls.__new__(cls)
    for name, value in kwargs.items():
        object.__setattr__(obj, name, value)
    check = getattr(obj, "check", None)
    if check is not None and not problems:
        # a check written for a reusable section names its keys "{path}.key"
        problems.extend(p.replace("{path}", path) for p in check())
    return obj


def _closest(word: str, options: list[str]) -> str | None:
    """The likeliest intended option: a close spelling, else one the word starts with."""
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return close[0]
    prefixed = sorted((o for o in options if word.startswith(o)), key=len, reverse=True)
    return prefixed[0] if prefixed else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def build(cls: type, data: dict, *, source: str) -> Any:
    """Validate ``data`` against schema ``cls``; raise one ConfigError listing every problem."""
    problems = _Problems()
    obj = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(
            f"invalid configuration ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n"
            + "\n".join(f"  - {p}" for p in problems),
            where=source,
            fix="correct the value(s) above, e.g. `usam config show key=value` to try an override; "
            "`usam config schema` lists every key with its type and range",
        )
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, range, doc) for every leaf of the schema, for `usam config schema`."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = _join(prefix, f.name)
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, path))
        else:
            rows.append((path, _type_name(tp), _range_text(dict(f.metadata)), f.metadata.get("doc", "")))
    return rows
