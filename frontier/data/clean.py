"""Document normalisation and filters.

`normalize` makes equal-looking text byte-equal (NFC, one newline convention, no control
characters) before anything is hashed, so exact dedup and the split see through cosmetic
differences. `Cleaner.reject` names the first filter that drops a document (None keeps it).
"""

from __future__ import annotations

import re
import unicodedata

import regex

from frontier.config.data import CleanConfig
from frontier.errors import DataError

# What one drop_regex may spend on one document. Python's re has no bound, so a pattern that backtracks
# catastrophically (which frontier.utils.safe_regex's static check may not see) would stall the stage;
# the `regex` package (re-compatible syntax, already a dependency of transformers) stops a search at a
# timeout. A real filter takes microseconds to milliseconds on a document the size limits allow.
REGEX_TIMEOUT_S = 2.0

# C0 and C1 control characters except \t (\x09) and \n (\x0a); \r is folded into \n first.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")
_NEWLINES = re.compile(r"\r\n?")
_ALNUM = re.compile(r"[^\W_]+")


def normalize(text: str, cfg: CleanConfig) -> str:
    if cfg.nfc and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if cfg.strip_control:
        if "\r" in text:
            text = _NEWLINES.sub("\n", text)
        text = _CONTROL.sub("", text)
    return text


def alnum_ratio(text: str) -> float:
    """Share of characters that are letters or digits (any script)."""
    return sum(map(len, _ALNUM.findall(text))) / len(text) if text else 0.0


def repeated_line_ratio(text: str) -> float:
    """Share of non-blank lines that repeat an earlier line of the document (boilerplate, spam)."""
    lines = [line for line in text.split("\n") if line.strip()]
    return 1.0 - len(set(lines)) / len(lines) if lines else 0.0


class Cleaner:
    """Apply the configured filters; `filter_names` lists them in the order they are tried."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.regexes = [regex.compile(p) for p in cfg.drop_regex]
        self.filter_names = [
            "min_chars",
            "max_chars",
            "max_line_chars",
            "min_alnum_ratio",
            "max_repeated_line_ratio",
            *(f"drop_regex[{i}]" for i in range(len(self.regexes))),
        ]

    def reject(self, text: str) -> str | None:
        cfg = self.cfg
        n = len(text)
        if n < cfg.min_chars or not text.strip():
            return "min_chars"
        if n > cfg.max_chars:
            return "max_chars"
        if n > cfg.max_line_chars and max(map(len, text.split("\n"))) > cfg.max_line_chars:
            return "max_line_chars"
        if cfg.min_alnum_ratio > 0 and alnum_ratio(text) < cfg.min_alnum_ratio:
            return "min_alnum_ratio"
        if cfg.max_repeated_line_ratio < 1 and repeated_line_ratio(text) > cfg.max_repeated_line_ratio:
            return "max_repeated_line_ratio"
        for i, pattern in enumerate(self.regexes):
            try:
                if pattern.search(text, timeout=REGEX_TIMEOUT_S):
                    return f"drop_regex[{i}]"
            except TimeoutError:
                raise DataError(
                    f"prepare.clean.drop_regex[{i}]: {pattern.pattern[:80]!r} ran over {REGEX_TIMEOUT_S:g} s on one "
                    f"document of {len(text)} characters (catastrophic backtracking); rewrite it with a possessive "
                    "quantifier or an atomic group, e.g. (?>...)"
                ) from None
        return None
