"""Validators and table helpers shared by the config modules (each error names the key)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from deepzip.errors import ConfigError


def _finite(value: float) -> bool:
    """``math.isfinite``, but ``False`` (not ``OverflowError``) for an integer too large for a
    float, such as JSON reads from a number written with 400 digits."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_sparsity(key: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number in [0, 1), got {value!r}")
    if not _finite(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{key} must be in [0, 1), got {value!r}")


def _check_quality(key: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a non-negative number, got {value!r}")
    if not _finite(value) or value < 0:
        raise ConfigError(f"{key} must be a finite number >= 0, got {value!r}")


def _check_int(key: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _check_flag(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _check_seed(key: str, value: object, *, bits: int) -> None:
    """A seed: an integer in ``[0, 2**bits)``, the range of what it seeds (checked up front,
    not when a random generator refuses it in the middle of a run)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise ConfigError(f"{key} must be an integer in [0, 2**{bits}), got {value!r}")


def _check_number(key: str, value: object, *, positive: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and _finite(value)
    if not ok or (value <= 0 if positive else value < 0):  # type: ignore[operator]
        raise ConfigError(f"{key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")


def _check_instance(key: str, value: object, cls: type) -> None:
    """A nested config of the right type (a stage's ``retrain``, a job's ``schedule``...)."""
    if not isinstance(value, cls):
        raise ConfigError(f"{key} must be a {cls.__name__}, got {value!r}")


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_bits(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise ConfigError(f"{key} must be an integer from 1 to 8, got {value!r}")


def _check_patterns(key: str, value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(
            f"{key} must be a tuple of non-empty glob strings (a list in TOML), got {value!r}"
        )


_T = TypeVar("_T")


def _check_table(data: object, where: str) -> None:
    """A config's ``from_dict`` input must be a table (``dict(data)`` of a list or a string
    would raise ``TypeError``/``ValueError``, not name the config)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table, got {data!r}")


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table, got {value!r}")
    return value


def _build(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
    _check_table(data, where)
    known = fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in known}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(names))})"
        )
    missing = [
        f.name
        for f in known
        if f.init and f.default is MISSING and f.default_factory is MISSING and f.name not in data
    ]
    if missing:
        keys = ", ".join(map(repr, missing))
        raise ConfigError(
            f"{where}: missing required key{'s' if len(missing) > 1 else ''} {keys} "
            f"(got {dict(data)!r})"
        )
    return cls(**data)


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


def _check_selection(
    where: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    overrides: tuple[Any, ...],
    override_cls: type,
) -> None:
    """Validate the include/exclude globs and the override items of a config."""
    _check_patterns(f"{where}.include", include)
    _check_patterns(f"{where}.exclude", exclude)
    if not isinstance(overrides, tuple) or not all(isinstance(o, override_cls) for o in overrides):
        raise ConfigError(
            f"{where}.overrides must be {override_cls.__name__} items, got {overrides!r}"
        )


def _selection_from_dict(
    cls: type[_T], override_cls: type, data: Mapping[str, Any], where: str
) -> _T:
    """Build a config with ``include``/``exclude`` globs and ``overrides`` tables."""
    _check_table(data, where)
    data = dict(data)
    raw = data.pop("overrides", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.overrides must be a list of tables, got {raw!r}")
    overrides: tuple[Any, ...] = tuple(
        _build(override_cls, o, f"{where}.overrides[{i}]") for i, o in enumerate(raw)
    )
    for key in ("include", "exclude"):
        if key in data:
            data[key] = _as_str_tuple(f"{where}.{key}", data[key])
    return _build(cls, {**data, "overrides": overrides}, where)


def _selection_to_dict(config: Any) -> dict[str, Any]:
    """The TOML/JSON form of a config with globs and overrides (``None`` values omitted)."""
    out = _as_dict(config)
    out["overrides"] = [_as_dict(o) for o in config.overrides]
    out["include"] = list(config.include)
    out["exclude"] = list(config.exclude)
    return out


def _as_str_tuple(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise ConfigError(f"{key} must be a list of globs, got {value!r}")
    return tuple(value)


def _check_keys(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})"
        )
