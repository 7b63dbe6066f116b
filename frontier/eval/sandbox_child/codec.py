"""Plain data across the sandbox boundary: a tagged JSON that carries only values, never objects with code.

A completion's function returns whatever it likes; what reaches the test runner is rebuilt from these
tags alone (None, bool, int, float incl. inf/nan, str, bytes, list, tuple, dict, set, frozenset), so
an object with a rigged ``__eq__`` cannot cross. Anything else is an error, as is nesting past 200.
"""

import json
import math

MAX_DEPTH = 200


def _enc(value, depth):
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply to return")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"int": str(value)}  # any size, no float rounding in JSON readers
    if kind is float:
        return {"float": repr(value) if math.isfinite(value) else str(value)}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind in (list, tuple, set, frozenset):
        items = sorted(value, key=repr) if kind in (set, frozenset) else value
        return {kind.__name__: [_enc(v, depth + 1) for v in items]}
    if kind is dict:
        return {"dict": [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"cannot return a {kind.__name__} from the sandbox (plain data only)")


def _dec(data, depth):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or isinstance(data, (bool, str)):
        return data
    if not isinstance(data, dict) or len(data) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = data.items()
    if tag == "int":
        return int(body)
    if tag == "float":
        return float(body)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag in ("list", "tuple", "set", "frozenset"):
        items = [_dec(v, depth + 1) for v in body]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict":
        return {_dec(k, depth + 1): _dec(v, depth + 1) for k, v in body}
    raise ValueError(f"unknown tag {tag!r}")


def dumps(value):
    return json.dumps(_enc(value, 0))


def loads(text):
    return _dec(json.loads(text), 0)


def decode(data):
    """From already-parsed JSON."""
    return _dec(data, 0)
