"""Loading the one parameter file into typed, validated dataclasses (frontier.config.params.Params).

Each section is a dataclass in this package (frontier/config/<section>.py); this module holds
the loader and the validation machinery they share. Sections are plain
dataclasses whose field types drive validation:

- ``bool`` / ``int`` / ``float`` / ``str`` are checked strictly (an int is accepted for a float,
  and a string such as ``"3e-4"``, which YAML 1.1 leaves as a string, is parsed as a float);
- ``Literal[...]`` lists the allowed values, ``X | None`` allows null, ``list[X]`` and
  ``dict[str, X]`` are checked element by element, a nested dataclass recursively;
- ranges come from field metadata: ``field(default=1, metadata=bounds(ge=1))``;
- cross-field rules live in a ``validate(self)`` method that raises ``ValueError("key: why")``.

Every failure is one `ConfigError` line naming where the value came from (the file, a --configfile,
--config or --set: `Origins`), the dotted key, the value and what was expected, with the closest valid
key for a misspelling.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from frontier.config.params import Params
from frontier.errors import ConfigError
from frontier.params_files import check_resolved
from frontier.utils.strict_yaml import MAX_PARAMS_BYTES, YamlRefused, load_plain, strict_load

_MISSING = dataclasses.MISSING


def _describe(tp: Any) -> str:
    """A short human description of an expected type, for error messages."""
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in get_args(tp) if a is not type(None)]
        nullable = type(None) in get_args(tp)
        return " or ".join(parts) + (" or null" if nullable else "")
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_describe(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return getattr(tp, "__name__", str(tp))


class _Invalid(Exception):
    """Internal: a value failed validation at `key`; turned into ConfigError with the source."""

    def __init__(self, key: str, message: str, scope: str | None = None) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.scope = scope  # a cross-field rule's section: its values may come from several layers


def _fmt(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(key: str, value: Any, tp: Any) -> _Invalid:
    return _Invalid(key, f"got {_fmt(value)}, expected {_describe(tp)}")


def _convert(tp: Any, value: Any, key: str, meta: dict[str, Any] | None = None) -> Any:
    """Check `value` against the annotation `tp` and return it converted (nested dataclasses built)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _bad(key, value, tp)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, meta)
            except _Invalid as exc:
                errors.append((arg, exc))
        if len(errors) == 1:
            raise errors[0][1]
        same_type = [exc for arg, exc in errors if arg is type(value)]  # e.g. an int out of its bounds
        if len(same_type) == 1:
            raise same_type[0]
        raise _bad(key, value, tp)
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        choices = [str(a) for a in get_args(tp)]
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _Invalid(key, f"got {_fmt(value)}, expected {_describe(tp)}{hint}")
    if origin is list:
        if not isinstance(value, list):
            raise _bad(key, value, tp)
        (item_tp,) = get_args(tp)
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(key, value, tp)
        _, val_tp = get_args(tp)
        return {str(k): _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise _bad(key, value, tp)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                value = int(value)
            else:
                raise _bad(key, value, tp)
        if not -(2**63) <= value < 2**63:
            raise _Invalid(key, f"got {_fmt(value)}, expected an integer that fits in 64 bits")
        _check_bounds(key, value, meta)
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _bad(key, value, tp) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(key, value, tp)
        value = float(value)
        if not math.isfinite(value):  # NaN passes every comparison below, inf would poison training
            raise _Invalid(key, f"got {value}, expected a finite number")
        _check_bounds(key, value, meta)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _bad(key, value, tp)
        return value
    if tp is Any:
        return value
    raise TypeError(f"config field {key}: unsupported annotation {tp!r}")  # a bug in a schema, not user input


def _check_bounds(key: str, value: float, meta: dict[str, Any] | None) -> None:
    if not meta:
        return
    checks = {
        "ge": (lambda v, b: v >= b, ">="),
        "gt": (lambda v, b: v > b, ">"),
        "le": (lambda v, b: v <= b, "<="),
        "lt": (lambda v, b: v < b, "<"),
    }
    for name, (ok, sym) in checks.items():
        if name in meta and not ok(value, meta[name]):
            raise _Invalid(key, f"got {_fmt(value)}, expected a value {sym} {meta[name]}")


def _unknown_key_message(key: str, prefix: str, names: list[str], cls: Any = None, rest: str = "") -> str:
    """'unknown key' with the closest valid key: where a key of the old layout went (the section's ``MOVED``
    class attribute; `rest`: the dotted rest of an override's key below it), a near spelling here, else the
    same name elsewhere."""
    moved = getattr(cls, "MOVED", {}).get(key)
    if moved:
        return f"moved to {moved}{'.' + rest if rest else ''}"
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
    elsewhere = [k for k in _all_leaf_keys() if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"unknown key; did you mean '{elsewhere[0]}'?"
    return f"unknown key; valid keys here: {', '.join(names)}"


def _all_leaf_keys() -> list[str]:
    return [k for name in typing.get_type_hints(Params) for k in section_keys(name)]


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from mapping `data`, rejecting unknown keys and wrong types."""
    where = prefix or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Invalid(where, f"got {_fmt(data)}, expected {_describe(cls)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise _Invalid(dotted, _unknown_key_message(str(key), prefix, list(fields), cls))
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], dotted, dict(f.metadata))
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise _Invalid(dotted, f"missing, expected {_describe(hints[name])}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            msg = str(exc)
            sub, _, why = msg.partition(": ")
            if why and " " not in sub:
                raise _Invalid(f"{prefix}.{sub}" if prefix else sub, why, scope=prefix) from None
            raise _Invalid(where, msg, scope=prefix) from None
    return obj


def _read_yaml(path: Path) -> Any:
    """Parse a parameter file strictly; every failure is one ConfigError naming the file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the parameter file ({exc.strerror})") from None
    if size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: {size} bytes; a parameter file may hold at most {MAX_PARAMS_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
        check_resolved(path, text)
        return load_plain(text)
    except YamlRefused as exc:
        raise ConfigError(f"{path}: {exc.key}: {exc.message}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the parameter file ({exc.strerror})") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` into the key and its YAML-parsed value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set optimizer.lr=3e-4")
    try:
        value = strict_load(raw) if raw.strip() else ""
    except YamlRefused as exc:
        raise ConfigError(f"--set {key}: {exc.message}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(
            f"--set {key}: value {raw[:80]!r} is not a valid YAML value ({exc.__class__.__name__})"
        ) from None
    return key, value


def _apply_override(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


class Origins:
    """Which layer of a merged config supplied each value: params.yaml, then each --configfile, then --config
    (Snakemake), or a file then each --set (the CLI). A refusal names the layer the user has to fix, not the
    first file of the stack: a typo from `--config` is reported as --config's.

    Values are recorded per dotted leaf key (a list, a scalar, or a mapping a --set replaced whole); a later
    layer's value replaces what an earlier one recorded at or below its key.
    """

    def __init__(self, base: str) -> None:
        self.base = base  # named when no layer supplied anything relevant (a key missing everywhere)
        self.layers: list[str] = []
        self._leaf: dict[str, str] = {}

    def _add(self, label: str) -> None:
        if label not in self.layers:
            self.layers.append(label)

    def _forget(self, key: str) -> None:
        for k in [k for k in self._leaf if _under(k, key)]:
            del self._leaf[k]

    def merge(self, data: dict[str, Any], label: str, layer: dict[str, Any]) -> None:
        """Merge `layer` into `data` in place as snakemake.utils.update_config does (mappings recursively,
        anything else replaces), recording `label` for every value it sets."""
        self._add(label)

        def walk(node: dict[str, Any], over: dict[str, Any], prefix: str) -> None:
            for key, value in over.items():
                dotted = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(value, dict):
                    if not isinstance(node.get(key), dict):
                        if key in node and not value:
                            continue  # update_config leaves a value under an empty mapping as it was
                        self._forget(dotted)  # a scalar there before is gone
                        node[key] = {}
                    walk(node[key], value, dotted)
                else:
                    self._forget(dotted)
                    node[key] = copy.deepcopy(value)
                    self._leaf[dotted] = label

        walk(data, layer, "")

    def replaced(self, label: str, key: str) -> None:
        """`label` set dotted `key` whole (a --set: a mapping value replaces, it does not merge)."""
        self._add(label)
        self._forget(key)
        self._leaf[key] = label

    def of(self, key: str, scope: str | None = None) -> str:
        """The layer(s) behind an error at `key`: the one that supplied the value at or above it; for a
        check across the values of `scope` (a section's cross-field rule), every layer that supplied one."""
        at = key if scope is None else scope
        for cut in reversed([i for i, c in enumerate(at) if c in ".["] + [len(at)]):
            if at[:cut] in self._leaf:  # one value holds it all (a list, a mapping a --set replaced)
                return self._leaf[at[:cut]]
        if scope is None:
            scope = key  # a section or a missing key: whoever supplied the values below it
        while True:
            found = {self._leaf[k] for k in self._leaf if scope in ("", "top level") or _under(k, scope)}
            if found:
                return " with ".join(label for label in self.layers if label in found)
            if scope in ("", "top level"):
                return self.base
            scope = scope[: max(scope.rfind("."), 0)]

    def line(self, key: str, message: str, scope: str | None = None) -> str:
        """The one-line refusal: `--set train.x: why` for a flag's own value, `file: train.x: why` else."""
        where = self.of(key, scope)
        return f"{where} {key}: {message}" if where in ("--set", "--config") else f"{where}: {key}: {message}"


def _under(key: str, scope: str) -> bool:
    """Is dotted `key` the key `scope` or below it (a subkey or a list element)?"""
    return key == scope or key.startswith((scope + ".", scope + "["))


def build_params(data: dict[str, Any], source: str | Origins = "params") -> Params:
    """Validate an already-parsed mapping into `Params`; errors name `source`, or, given the `Origins` of a
    merged config, the layer that supplied the refused value."""
    try:
        return _build(Params, data, "")
    except _Invalid as exc:
        if isinstance(source, Origins):
            raise ConfigError(source.line(exc.key, exc.message, exc.scope)) from None
        raise ConfigError(f"{source}: {exc.key}: {exc.message}") from None


def read_params_data(path: str | Path) -> dict[str, Any]:
    """The mapping a parameter file holds, read as plain data (strict YAML: no tags, no templates).

    Used by every entry point, the Snakefile included (Snakemake's own loader would evaluate YTE templates).
    A resolved params file written for a Snakemake run is checked against the hash in its name.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    loaded = _read_yaml(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {_fmt(loaded)}")
    if "__use_yte__" in loaded:  # Snakemake's template switch: named, so the refusal is not a bare "unknown key"
        raise ConfigError(f"{path}: __use_yte__: a YTE template; parameter files are data here, write the values out")
    return loaded


def load_params(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read `path` (YAML; None for defaults), apply ``key=value`` overrides, validate.

    Raises ConfigError with one line naming the file (or ``--set``), the key and the problem.
    """
    data: dict[str, Any] = {}
    origins = Origins("defaults" if path is None else str(path))
    if path is not None:
        origins.merge(data, str(path), read_params_data(path))
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(data, key, value)
        origins.replaced("--set", key)
        try:
            _check_key_path(key)
        except _Invalid as exc:
            raise ConfigError(f"--set {exc.key}: {exc.message}") from None
    return build_params(data, origins)


def _check_key_path(key: str) -> None:
    """Reject an override whose key does not exist in the schema, suggesting the closest."""
    cls: Any = Params
    prefix = ""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return  # inside a list/dict/free value: the full validation checks it
        names = [f.name for f in dataclasses.fields(cls)]
        dotted = f"{prefix}.{part}" if prefix else part
        if part not in names:
            rest = ".".join(parts[i + 1 :])
            moved = rest and part in getattr(cls, "MOVED", {})  # name the whole key that moved
            raise _Invalid(
                f"{dotted}.{rest}" if moved else dotted, _unknown_key_message(part, prefix, names, cls, rest)
            )
        cls = unwrap_optional(typing.get_type_hints(cls)[part])
        prefix = dotted


def unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def to_dict(obj: Any) -> dict[str, Any]:
    """The plain-data form of a params object (for YAML dumps and hashing)."""
    return dataclasses.asdict(obj)


def section_keys(name: str) -> list[str]:
    """Dotted leaf keys of a top-level section (or the key itself for a scalar), for DVC `params:`.

    Lists and free mappings are leaves: DVC tracks them as one value.
    """
    tp: Any = Params
    for part in name.split("."):  # a dotted key names a subsection or a leaf
        hints = typing.get_type_hints(unwrap_optional(tp))
        if part not in hints:
            raise KeyError(name)
        tp = hints[part]
    out: list[str] = []

    def walk(tp: Any, prefix: str) -> None:
        tp = unwrap_optional(tp)
        if dataclasses.is_dataclass(tp):
            sub = typing.get_type_hints(tp)
            for f in dataclasses.fields(tp):
                walk(sub[f.name], f"{prefix}.{f.name}")
        else:
            out.append(prefix)

    walk(tp, name)
    return out


def dump_resolved(params: Params, directory: str | Path, sections: list[str] | None = None) -> Path:
    """Write the fully resolved parameters beside a stage's outputs (``params.resolved.yaml``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = to_dict(params)
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}
    path = directory / "params.resolved.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path
