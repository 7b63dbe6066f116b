"""Document normalisation and filters.

`normalize` makes equal-looking text byte-equal (NFC, one newline convention, no control
characters) before anything is hashed, so exact dedup and the split see through cosmetic
differences. `Cleaner.reject` names the first filter that drops a document (None keeps it).
"""

from __future__ import annotations

import re
import unicodedata

from frontier.data.config import CleanConfig

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
        self.regexes = [re.compile(p) for p in cfg.drop_regex]
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
        for i, regex in enumerate(self.regexes):
            if regex.search(text):
                return f"drop_regex[{i}]"
        return None
