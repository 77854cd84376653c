"""Strict, typed configuration records: the machinery behind ``cvfp.config``.

A ``StrictConfig`` is a frozen dataclass built from a dict that names only its fields, each value checked
against the field's annotation (``from_dict``: unknown keys and wrong types are errors that name the
field); ``__post_init__`` checks the values; ``override`` applies ``section.key=value`` strings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from cvfp.errors import CvfpError
from cvfp.files import loads_json

T = TypeVar("T", bound="StrictConfig")


class ConfigError(CvfpError, ValueError):
    """A configuration key or value is invalid."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _check_type(name, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name}: expected null, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_check_type(f"{name}[{i}]", v, inner) for i, v in enumerate(value))
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{name}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, StrictConfig):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict):
            return annotation.from_dict(value, prefix=f"{name}.")
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    raise ConfigError(f"{name}: unsupported annotation {annotation}")


def parse_value(text: str) -> Any:
    """Parse a ``key=value`` value: JSON if it parses, else the raw string."""
    try:
        return loads_json(text)
    except json.JSONDecodeError:
        return text


@dataclasses.dataclass(frozen=True)
class StrictConfig:
    """Base class: strict construction from dicts, JSON round-trip, overrides."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(prefix + u for u in unknown)} for {cls.__name__}; "
                f"valid keys: {', '.join(sorted(names))}"
            )
        kwargs = {k: _check_type(prefix + k, v, hints[k]) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}" if prefix else str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, StrictConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` applied, validated like ``from_dict``."""
        data = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, StrictConfig):
                value = value.to_dict()
            data[key] = value
        return type(self).from_dict(data)

    def override(self: T, assignments: typing.Iterable[str]) -> T:
        """Apply ``section.key=value`` strings (values parsed as JSON)."""
        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, raw = item.split("=", 1)
            node = data
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"override {key!r}: {part!r} is not a config section")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"override {key!r}: unknown key {parts[-1]!r}")
            node[parts[-1]] = parse_value(raw)
        return type(self).from_dict(data)

    @classmethod
    def from_file(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(read_config_file(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``, or a ConfigError that names the file."""
    path = Path(path)
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a JSON file") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (invalid byte at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return upgrade_run_dict(data)


# Older cvfp's config files, read as today's: the one home of every such upgrade.
def upgrade_run_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A run config dict of an older cvfp in today's fields: the size stored beside the config (before
    ``data.samples``), ``model.tied_head`` (before ``model.head``) and held-out sets sized by conversations alone
    (before ``data.heldout_*_tokens``)."""
    if "samples" in data and isinstance(data.get("data", {}), dict):
        data["data"] = {**data.get("data", {}), "samples": data.pop("samples")}
    if isinstance(data.get("model"), dict):
        data["model"] = upgrade_model_dict(data["model"])
    held_out = data.get("data")
    if isinstance(held_out, dict) and "heldout_val_conversations" in held_out and "heldout_val_tokens" not in held_out:
        # Before the composition rule, held-out sets were sized by conversations alone.
        data["data"] = {**held_out, "heldout_val_tokens": 0, "heldout_test_tokens": 0}
    return data


def upgrade_model_dict(model: dict[str, Any]) -> dict[str, Any]:
    """A model config dict with ``tied_head: true|false`` as ``head: "tied"|"full"``, and a baseline's config
    from before the baselines' identity path, LSTM depth, forget-gate bias and Transformer windows as it ran."""
    if "tied_head" in model and "head" not in model:
        tied = model["tied_head"]
        model = {k: v for k, v in model.items() if k != "tied_head"}
        model["head"] = "tied" if tied is True else "full" if tied is False else tied  # else: refused by the type check
    if "baseline_identity" not in model:  # as the baselines ran (a CVFP design never reads these fields)
        model = {"baseline_identity": False, "lstm_layers": None, "lstm_forget_bias": None,
                 "transformer_train_windows": "disjoint", **model}  # fmt: skip
    return model


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def field_docs(cls: type[StrictConfig], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, documentation) of every field of ``cls`` and of its sections, the
    documentation read from the comment above each field in the class's own source (so it never drifts)."""
    import inspect
    import re

    lines = inspect.getsource(cls).splitlines()
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if isinstance(f.default_factory, type) and issubclass(f.default_factory, StrictConfig):
            out += field_docs(f.default_factory, f"{prefix}{f.name}.")
            continue
        at = next(i for i, line in enumerate(lines) if re.match(rf"\s+{f.name}\s*:", line))
        comment = []
        for line in reversed(lines[:at]):
            if not line.strip().startswith("#"):
                break
            comment.insert(0, line.strip().lstrip("#").strip())
        if not comment and out and out[-1][0].startswith(prefix):  # declared with the field above: its comment
            comment = [out[-1][3]]
        annotation = re.sub(r"typing\.|<class '|'>", "", str(hints[f.name]))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((prefix + f.name, annotation, json.dumps(default if not isinstance(default, tuple) else list(default)),
                    " ".join(comment)))  # fmt: skip
    return out
