"""Hyper-parameters as a nested, closed attribute tree (Monolith's `hyperparams.Params`, reduced).

Fields must be `define`d before they are set, so a typo in a parameter name is an error naming the
field instead of a silently ignored attribute.
"""
from __future__ import annotations

import copy
from typing import Any


class Params:
    def __init__(self) -> None:
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_docs", {})

    def define(self, name: str, default: Any, doc: str = "") -> None:
        if name in self._values:
            raise AttributeError(f"parameter {name!r} is already defined")
        if not name.isidentifier():
            raise AttributeError(f"parameter name {name!r} is not an identifier")
        self._values[name] = default
        self._docs[name] = doc

    def has(self, name: str) -> bool:
        return name in self._values

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(f"parameter {name!r} is not defined (known: {sorted(values)})")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise AttributeError(f"cannot set undefined parameter {name!r}; define it first")
        self._values[name] = value

    def set(self, **kwargs: Any) -> Params:
        for name, value in kwargs.items():
            setattr(self, name, value)
        return self

    def copy(self) -> Params:
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, Params) else v for k, v in self._values.items()}

    def __iter__(self):
        return iter(self._values.items())

    def __repr__(self) -> str:
        return f"Params({self.to_dict()!r})"
