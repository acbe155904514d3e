"""Metric names and tags as the original spells them, mapped onto Prometheus names and labels.

Monolith names metrics with dots (`run_steps.all`) under a dotted prefix (`monolith.training`) and passes
tags either as a dict or, from its TF ops, as a `"k1=v1|k2=v2"` string. Prometheus allows only
`[a-zA-Z_:][a-zA-Z0-9_:]*` names and `[a-zA-Z_][a-zA-Z0-9_]*` label names, so every other character becomes
`_` — one rule, so a user can predict `monolith.training` + `run_steps.all` → `monolith_training_run_steps_all`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

DEFAULT_PREFIX = "monolith.training"
PREFIX_ENV = "MONOLITH_METRIC_PREFIX"

_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")

Tags = Mapping[str, object] | str | None


def get_metric_prefix() -> str:
    """The prefix every metric of this process carries: `$MONOLITH_METRIC_PREFIX` or `monolith.training`."""
    return os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX


def sanitize_name(name: str) -> str:
    """Map a dotted Monolith name to a Prometheus metric name (invalid characters → `_`)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    out = _BAD_NAME_CHARS.sub("_", name)
    return "_" + out if out[0].isdigit() else out


def sanitize_label(key: str) -> str:
    """Map a tag key to a Prometheus label name; keys Prometheus reserves (`__x`) are rejected."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"tag key must be a non-empty string, got {key!r}")
    out = _BAD_LABEL_CHARS.sub("_", key)
    if out[0].isdigit():
        out = "_" + out
    if out.startswith("__"):
        raise ValueError(f"tag key {key!r} maps to label {out!r}, which Prometheus reserves (leading '__')")
    return out


def full_name(prefix: str, name: str) -> str:
    """`prefix.name` sanitized; an empty prefix leaves the name alone."""
    return sanitize_name(f"{prefix}.{name}" if prefix else name)


def parse_tags(tags: Tags) -> dict[str, str]:
    """Accept a dict or the original's `"k=v|k2=v2"` string; return `{label: value}` with sanitized keys."""
    if tags is None:
        return {}
    if isinstance(tags, str):
        pairs: list[tuple[str, str]] = []
        for piece in tags.split("|"):
            if not piece:
                continue
            key, sep, value = piece.partition("=")
            if not sep or not key:
                raise ValueError(f"tag {piece!r} in {tags!r} is not of the form key=value")
            pairs.append((key, value))
    elif isinstance(tags, Mapping):
        pairs = [(k, str(v)) for k, v in tags.items()]
    else:
        raise TypeError(f"tags must be a dict or a 'k=v|k2=v2' string, got {type(tags).__name__}")
    out: dict[str, str] = {}
    for key, value in pairs:
        label = sanitize_label(key)
        if label in out:
            raise ValueError(f"tags {tags!r} give label {label!r} twice")
        out[label] = str(value)
    return out


def format_tags(tags: Mapping[str, object] | None) -> str:
    """The inverse of `parse_tags` for dicts: `{"a": 1, "b": "x"}` → `"a=1|b=x"`."""
    if not tags:
        return ""
    for key, value in tags.items():
        if "|" in f"{key}{value}" or "=" in str(key):
            raise ValueError(f"tag {key!r}={value!r} cannot be written as a 'k=v|k2=v2' string ('|' or '=' in it)")
    return "|".join(f"{k}={v}" for k, v in tags.items())
