r"""Regular expressions from parameter files, refused when they could stall a stage.

Python's `re` backtracks: a pattern such as ``(a+)+$`` takes exponential time on a line of a's that
ends in something else, and nothing bounds it (no timeout). A user's ``drop_regex`` runs over every
document of the corpus, so a pattern is checked once, when the params are validated, for the shapes
that backtrack catastrophically: a repeated group that itself contains a repeat (nested quantifiers),
and a repeated alternation whose branches can start with the same character. Repetition counts are
bounded too (``a{4294967295}`` makes the compiler overflow; ``a{100000}`` a huge program).

This is a conservative static rule, the one tools such as safe-regex apply: it refuses some patterns
that would in fact run fast (write them with a possessive quantifier or an atomic group, which
Python 3.11 has, e.g. ``(?>a+)+`` or ``a++``) and it does not prove every accepted pattern linear
(``\d+\d+\d+\d+$`` passes it). It is the early, one-line refusal at validation; the bound that holds
for every pattern is the per-document timeout where the patterns run (frontier.data.clean).
"""

from __future__ import annotations

import re
from typing import Any

import regex

try:  # Python 3.11+
    import re._parser as _sre  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre  # type: ignore[no-redef]

MAX_REPEAT = 1000  # {m,n} bounds; a real filter needs a handful
MAX_PATTERN_CHARS = 2000

_C = _sre  # the opcode names (MAX_REPEAT, SUBPATTERN, ...) live on the parser module
_REPEATS = {_C.MAX_REPEAT, _C.MIN_REPEAT}
_POSSESSIVE = getattr(_C, "POSSESSIVE_REPEAT", None)
_ATOMIC = getattr(_C, "ATOMIC_GROUP", None)


def _children(op: Any, av: Any) -> list[Any]:
    """The sub-patterns of one parsed item (lists of (op, av) pairs)."""
    if op in _REPEATS or op == _POSSESSIVE:
        return [av[2]]
    if op == _C.SUBPATTERN:
        return [av[-1]]
    if op == _C.BRANCH:
        return list(av[1])
    if op == _ATOMIC:
        return [av]
    if op in (_C.ASSERT, _C.ASSERT_NOT):
        return [av[1]]
    if op == _C.GROUPREF_EXISTS:
        return [b for b in av[1:] if b is not None]
    return []


def _has_repeat(items: Any, unbounded_only: bool) -> bool:
    """Is there a repeat inside `items` that can match a variable number of times (unbounded, if asked)?"""
    for op, av in items:
        if op in _REPEATS and (av[1] == _C.MAXREPEAT if unbounded_only else av[1] > av[0]):
            return True
        if op == _ATOMIC or op == _POSSESSIVE:
            continue  # never backtracked into
        if any(_has_repeat(child, unbounded_only) for child in _children(op, av)):
            return True
    return False


def _first(items: Any) -> object:
    """The first thing a sub-pattern matches: a literal code point, or None for "could be anything"."""
    for op, av in items:
        if op == _C.LITERAL:
            return av
        if op == _C.SUBPATTERN:
            return _first(av[-1])
        return None
    return None


def _ambiguous_branch(items: Any) -> bool:
    """Is there an alternation (outside nested repeats) with two ways to start the same text, or an empty
    alternative? (The parser factors a common prefix out: ``a|aa`` becomes ``a(?:|a)``.)"""
    for op, av in items:
        if op == _C.BRANCH:
            firsts = [_first(b) for b in av[1]]
            if None in firsts or len(set(firsts)) < len(firsts):
                return True
            if any(_ambiguous_branch(b) for b in av[1]):
                return True
        elif op == _C.SUBPATTERN and _ambiguous_branch(av[-1]):
            return True
    return False


def _problem(items: Any) -> str | None:
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            for bound in (low, high):
                if bound != _C.MAXREPEAT and bound > MAX_REPEAT:
                    return f"a repetition count of {bound} (at most {MAX_REPEAT})"
            # Unbounded around variable: exponential, (a+)+ or (\d{1,3})+. Bounded around unbounded:
            # polynomial of that degree, (.*a){20}. Bounded around bounded, (\d{1,3}\.){3}, is fine.
            nested = _has_repeat(body, unbounded_only=high != _C.MAXREPEAT)
            if high > 1 and nested:
                return "a repeated group containing another repeat (nested quantifiers backtrack exponentially)"
            if high > 1 and _ambiguous_branch(body):
                return "a repeated alternation whose branches can match the same text (exponential backtracking)"
        if op == _ATOMIC or op == _POSSESSIVE:
            continue  # no backtracking into these
        for child in _children(op, av):
            found = _problem(child)
            if found:
                return found
    return None


def unsafe_regex(pattern: str) -> str | None:
    """Why `pattern` is refused (one phrase), or None when it is accepted."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"{len(pattern)} characters (at most {MAX_PATTERN_CHARS})"
    try:
        parsed = _sre.parse(pattern)
        re.compile(pattern)
        regex.compile(pattern)  # the engine that runs drop_regex (with a timeout)
    except (re.error, regex.error) as exc:
        return f"not a valid regular expression ({exc})"
    except (OverflowError, RecursionError, MemoryError) as exc:
        return f"not a usable regular expression ({exc or exc.__class__.__name__})"
    return _problem(list(parsed))
