"""Flat, typed, validated dataclass configs.

Every workload's config is a dataclass deriving from `Config`. `from_dict` rejects unknown keys,
wrong types and (through `validate`) out-of-range values with one line naming the key. The
resolved config is saved as `config.json` in every run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import types
import typing
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import yaml

from raygen.errors import UserError


def check(condition: bool, key: str, message: str) -> None:
    """Raise a one-line UserError about config key `key` unless condition holds."""
    if not condition:
        raise UserError(f"config key '{key}': {message}")


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with numeric bounds, declared once and checked by `Config.validate` (None passes)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if isinstance(default, list):  # a list field: every entry is checked; each config gets its own copy
        return dataclasses.field(default_factory=lambda: list(default), metadata={"bounds": bounds})
    return dataclasses.field(default=default, metadata={"bounds": bounds})


_BOUND_TEXT = {"ge": (lambda v, b: v >= b, "must be >= {}"), "gt": (lambda v, b: v > b, "must be > {}"),
               "le": (lambda v, b: v <= b, "must be <= {}"), "lt": (lambda v, b: v < b, "must be < {}")}


def _check_bounds(config: Any) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        for kind, bound in field.metadata.get("bounds", {}).items():
            holds, text = _BOUND_TEXT[kind]
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if v is not None:
                    check(holds(v, bound), field.name, f"{text.format(bound)}, got {v!r}")


# A value is shown in an error in short form: a YAML alias bomb (a few lines that expand to 10^9
# items by reference) must not be formatted whole, and a value that large is refused before use.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 3, 6, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40
MAX_VALUE_ITEMS = 100_000
# Seeds go to numpy's SeedSequence and torch's manual_seed: non-negative 63-bit integers fit both.
MAX_SEED = 2**63 - 1
# A run name becomes directory names (and Ray Tune's longer trial names under them): keep room under NAME_MAX.
MAX_NAME = 100


def short(value: Any) -> str:
    """repr(value) cut to a line, whatever its size or depth."""
    return _SHORT.repr(value)


def check_size(value: Any, key: str) -> None:
    """Refuse a value holding more than MAX_VALUE_ITEMS items, counting shared (aliased) items every
    time they appear: the walk stops at the limit, so a bomb costs at most that many steps."""
    budget, todo = MAX_VALUE_ITEMS, [value]
    while todo:
        item = todo.pop()
        budget -= 1
        if budget < 0:
            raise UserError(f"config key '{key}': the value holds more than {MAX_VALUE_ITEMS} items "
                            "(a YAML alias expanding into a huge structure?); give a plain, short value")
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, (str, bytes)) and len(item) > MAX_VALUE_ITEMS:
            raise UserError(f"config key '{key}': the value is {len(item)} characters long; the limit is "
                            f"{MAX_VALUE_ITEMS}")


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/JSON value to type tp, or raise a UserError naming the key."""
    origin = get_origin(tp)
    fail = UserError(f"config key '{key}': expected {_describe(tp)}, got {short(value)}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        raise fail
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise fail
    if origin in (list, tuple):
        (inner,) = get_args(tp)[:1]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # a single number where a list is expected: a list of one
        if not isinstance(value, (list, tuple)):
            raise fail
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string; people write floats so
            value = _float_or_none(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            return float(value)
        raise fail
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `name: 2024` is a name, not a number
        if isinstance(value, str):
            return value
        raise fail
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise fail
    raise TypeError(f"unsupported config field type {tp!r} for {key}")


@dataclasses.dataclass
class Config:
    """Fields every run has. Subclasses add their own flat fields (numeric bounds with `bounded`)
    and extend `validate` with cross-field rules only.

    `RESUME_FREE` names the keys that may change when a run is resumed because they do not change
    its results (parallelism, logging cadence); every other key is part of the run's provenance.
    """

    RESUME_FREE: ClassVar[frozenset[str]] = frozenset()

    name: str = "run"
    storage_path: str = "runs"
    seed: int = bounded(0, ge=0, le=MAX_SEED)

    def __post_init__(self) -> None:
        _check_bounds(self)
        self.validate()

    def validate(self) -> None:
        check(bool(self.name) and not self.name.startswith(".") and not any(c in self.name for c in "/\\")
              and self.name.isprintable(), "name",
              f"must be a plain directory name (printable, no '/', '\\', no leading '.'), got {short(self.name)}")
        check(len(self.name) <= MAX_NAME, "name", f"is {len(self.name)} characters long; use at most {MAX_NAME}")
        check(bool(self.storage_path), "storage_path", "must not be empty")
        from raygen.storage import check_no_credentials

        for field in dataclasses.fields(self):  # every location a config holds ends up in config.json
            value = getattr(self, field.name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, str):
                    check_no_credentials(v, f"config key '{field.name}'")
        # every seed list a workload declares (`seeds: [0, 1]`) obeys the same range as `seed`
        seeds = getattr(self, "seeds", None)
        for v in seeds if isinstance(seeds, (list, tuple)) else [] if seeds is None else [seeds]:
            check(0 <= v <= MAX_SEED, "seeds", f"seeds must be in [0, 2**63 - 1], got {v}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        if not isinstance(values, dict):
            raise UserError(f"a {cls.__name__} must be a mapping of keys to values, got {short(values)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        for k, v in values.items():
            if not isinstance(k, str):
                raise UserError(f"config key {short(k)} is not a name; keys are plain words like 'seed'")
            check_size(v, k)
        unknown = sorted(set(values) - fields)
        if unknown:
            raise UserError(
                f"unknown config key '{unknown[0]}' for {cls.__name__}; valid keys: {', '.join(sorted(fields))}"
            )
        kwargs = {k: _coerce(v, hints[k], k) for k, v in values.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        return type(self).from_dict({**self.to_dict(), **changes})

    @property
    def run_dir(self) -> str:
        """Where this run writes: `<storage_path>/<name>` (a local path or a pyarrow URI, query kept last)."""
        from raygen.storage import join

        return join(self.storage_path, self.name)

    def to_json(self) -> str:
        return json.dumps({"config_class": type(self).__name__, **self.to_dict()}, indent=2)

    def provenance(self) -> dict[str, Any]:
        """The settings that determine this run's results (what a resume must match)."""
        return type(self).provenance_of(self.to_dict())

    @classmethod
    def provenance_of(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Like `provenance`, for saved values; a key the saved config lacks (it predates that key)
        counts as the key's default, which must be the old behaviour when a key is added."""
        ignored = {"name", "storage_path", "config_class"} | cls.RESUME_FREE
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        return {k: v for k, v in {**defaults, **values}.items() if k not in ignored}


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """`["steps=10", "sigmas=[1, 0.5]"]` -> {"steps": 10, "sigmas": [1, 0.5]} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
        except RecursionError:
            raise UserError(f"--set {key.strip()}: the value nests too deeply to be a setting") from None
    return out
