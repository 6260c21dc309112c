"""Turn plain YAML data into frozen, typed config objects, naming the YAML path of every error.

The config classes in `pipeline.config` are ordinary frozen dataclasses; this module walks their type
hints. Constraints ride on field metadata (see `setting`), so each class reads like the YAML it accepts.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints


class ConfigError(Exception):
    """The config file, or an environment override of it, is invalid. Exit status 2."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class FieldError(ValueError):
    """Raised by a config class's __post_init__ to name the field(s) at fault, relative to the class.

    The builder turns each (field, message) into "<path of the class>.<field>: <message>", so a
    cross-field check reports the YAML path the user must edit, like every other config error.
    """

    def __init__(self, *problems: tuple[str, str]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))


class Secret:
    """A string that never shows itself in repr/str/logs; `reveal()` is the one way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('******')"

    def __str__(self) -> str:
        return "******"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    min: float | None = None,
    max: float | None = None,
    pattern: str | None = None,
    min_items: int | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with validation rules attached."""
    meta = {"min": min, "max": max, "pattern": pattern, "min_items": min_items, "help": help}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a default_factory-free immutable default")
    return dataclasses.field(default=default, metadata=meta)


T = TypeVar("T")
_MISSING = object()


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _range_text(meta: Mapping[str, Any], kind: str) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{kind} {_num(lo)}..{_num(hi)}"
    if lo is not None:
        return f"{kind} >= {_num(lo)}"
    if hi is not None:
        return f"{kind} <= {_num(hi)}"
    return kind


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class _Builder:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> Any:
        self.problems.append(f"{path or '<root>'}: {message}")
        return _MISSING

    def build(self, tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            if value is None:
                if type(None) in get_args(tp):
                    return None
                return self.fail(path, "expected a value, got null")
            if len(options) == 1:
                return self.build(options[0], value, path, meta)
            return self.fail(path, f"unsupported union type {tp}")
        if origin is Literal:
            choices = get_args(tp)
            if value in choices:
                return value
            listed = ", ".join(_describe(c) for c in choices)
            return self.fail(path, f"expected one of {listed}, got {_describe(value)}")
        if origin is tuple:
            return self._tuple(tp, value, path, meta)
        if origin in (dict, Mapping, typing.Mapping):
            return self._mapping(tp, value, path, meta)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.dataclass(tp, value, path)
        if tp is bool:
            if isinstance(value, bool):
                return value
            return self.fail(path, f"expected true or false, got {_describe(value)}")
        if tp is int:
            return self._number(int, value, path, meta)
        if tp is float:
            return self._number(float, value, path, meta)
        if tp is Decimal:
            return self._number(Decimal, value, path, meta)
        if tp is str or tp is Secret:
            if not isinstance(value, str):
                # YAML reads `0123` as 83 (octal) and `12_34` as 1234: str() of what it parsed is not
                # what was written, so a text setting must be written as a string.
                scalar = not isinstance(value, (Mapping, list)) and value is not None
                found = _describe(value)
                if tp is Secret and scalar:  # even misread, it is (most of) a password
                    kind = "a boolean" if isinstance(value, bool) else (
                        "a number" if isinstance(value, (int, float)) else f"a {type(value).__name__}")
                    found = f"{kind} (not shown: a secret)"
                return self.fail(path, f"expected a string{' (quote it)' if scalar else ''}, got {found}")
            text = value
            pattern = meta.get("pattern")
            if pattern and not re.fullmatch(pattern, text):
                return self.fail(path, f"expected a string matching {pattern}, got {_describe(text)}")
            if not text and meta.get("min_items"):
                return self.fail(path, "expected a non-empty string")
            return Secret(text) if tp is Secret else text
        raise TypeError(f"config schema uses an unsupported type {tp!r} at {path}")

    def _number(self, kind: type, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        name = {int: "an integer", float: "a number", Decimal: "a decimal number"}[kind]
        expected = _range_text(meta, f"expected {name}")
        if isinstance(value, bool):
            return self.fail(path, f"{expected}, got {_describe(value)}")
        try:
            if kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                number: Any = int(value) if not isinstance(value, str) else int(value.strip())
            elif kind is float:
                number = float(value)
            else:
                number = Decimal(str(value))
        except (TypeError, ValueError, InvalidOperation):
            return self.fail(path, f"{expected}, got {_describe(value)}")
        if kind is float and number != number:  # NaN passes no range check
            return self.fail(path, f"{expected}, got {_describe(value)}")
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            return self.fail(path, f"{expected}, got {_describe(value)}")
        return number

    def _tuple(self, tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        args = get_args(tp)
        if not isinstance(value, list):
            return self.fail(path, f"expected a list, got {_describe(value)}")
        item_type = args[0]
        items = [self.build(item_type, v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
        min_items = meta.get("min_items")
        if min_items is not None and len(value) < min_items:
            return self.fail(path, f"expected a list of at least {min_items} item(s), got {len(value)}")
        if any(item is _MISSING for item in items):
            return _MISSING
        return tuple(items)

    def _mapping(self, tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
        key_type, value_type = get_args(tp)
        if not isinstance(value, Mapping):
            return self.fail(path, f"expected a mapping, got {_describe(value)}")
        out = {}
        for key, item in value.items():
            k = self.build(key_type, key, f"{path}.{key}", {})
            v = self.build(value_type, item, f"{path}.{key}", meta)
            if k is not _MISSING and v is not _MISSING:
                out[k] = v
        return types.MappingProxyType(out)

    def dataclass(self, cls: type[T], value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            return self.fail(path, f"expected a mapping, got {_describe(value)}")
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields))
                self.fail(join_path(path, str(key)), f"unknown key (known keys: {known})")
        kwargs = {}
        for name, field in fields.items():
            sub = join_path(path, name)
            if name in value:
                built = self.build(hints[name], value[name], sub, field.metadata)
            elif _has_default(field):
                continue
            else:
                built = self.fail(sub, "required key is missing")
            if built is not _MISSING:
                kwargs[name] = built
        if len(kwargs) + _defaulted(fields, value) < len(fields):
            return _MISSING
        try:
            obj = cls(**kwargs)
        except FieldError as exc:  # a __post_init__ cross-field check naming its fields
            for field_name, message in exc.problems:
                self.fail(join_path(path, field_name), message)
            return _MISSING
        except ValueError as exc:  # a __post_init__ cross-field check
            return self.fail(path, str(exc))
        return obj


def _has_default(field: dataclasses.Field[Any]) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def _defaulted(fields: Mapping[str, dataclasses.Field[Any]], value: Mapping[str, Any]) -> int:
    return sum(1 for n, f in fields.items() if n not in value and _has_default(f))


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def build(cls: type[T], data: Any) -> T:
    """Validate `data` against the dataclass `cls`; raise ConfigError listing every problem."""
    builder = _Builder()
    result = builder.dataclass(cls, data, "")
    if builder.problems or result is _MISSING:
        raise ConfigError(builder.problems or ["invalid configuration"])
    return typing.cast(T, result)


def to_plain(obj: Any, *, reveal: bool = False) -> Any:
    """The config as plain data, secrets masked unless `reveal` is set."""
    if isinstance(obj, Secret):
        return obj.reveal() if reveal else str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name), reveal=reveal) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v, reveal=reveal) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_plain(v, reveal=reveal) for k, v in obj.items()}
    if isinstance(obj, Decimal):
        return str(obj)
    return obj
