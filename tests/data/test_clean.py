"""Normalisation and each document filter."""

from __future__ import annotations

import unicodedata

import pytest

from frontier.config import ConfigError
from frontier.config.data import CleanConfig
from frontier.data.clean import Cleaner, alnum_ratio, normalize, repeated_line_ratio

from .helpers import make_params


def test_normalize_nfc_newlines_and_control_chars():
    decomposed = "e\u0301te\u0301"  # e + combining acute, twice
    assert not unicodedata.is_normalized("NFC", decomposed)
    text = f"{decomposed}\r\nline2\rline3\x00\x07\x1b[0m\x7f\x85\tend\n"
    out = normalize(text, CleanConfig())
    assert out == "\u00e9t\u00e9\nline2\nline3[0m\tend\n"
    assert normalize(text, CleanConfig(nfc=False, strip_control=False)) == text


def test_ratios():
    assert alnum_ratio("ab12") == 1.0
    assert alnum_ratio("a_b !") == pytest.approx(2 / 5)  # underscore and punctuation are not alphanumeric
    assert alnum_ratio("日本") == 1.0
    assert repeated_line_ratio("a\nb\na\n\n\na\n") == pytest.approx(2 / 4)
    assert repeated_line_ratio("\n\n") == 0.0


GOOD = "def function(argument):\n    return argument + 1\n"


@pytest.mark.parametrize(
    ("overrides", "text", "expected"),
    [
        ({"min_chars": 10}, "short", "min_chars"),
        ({"min_chars": 0}, "   \n\t", "min_chars"),  # whitespace only is never kept
        ({"max_chars": 20}, GOOD, "max_chars"),
        ({"max_line_chars": 20}, GOOD, "max_line_chars"),
        ({"max_line_chars": 30}, GOOD, None),
        ({"min_alnum_ratio": 0.9}, GOOD, "min_alnum_ratio"),
        ({"min_alnum_ratio": 0.5}, GOOD, None),
        ({"max_repeated_line_ratio": 0.2}, "x = 1\n" * 5 + "y\n", "max_repeated_line_ratio"),
        ({"max_repeated_line_ratio": 0.2}, GOOD, None),
        ({"drop_regex": ["^#!", "lorem ipsum"]}, "some lorem ipsum text here ok\n", "drop_regex[1]"),
        ({"drop_regex": ["^#!"]}, GOOD, None),
    ],
)
def test_each_filter(overrides, text, expected):
    cfg = make_params({"clean": {"min_chars": 1, **overrides}}).prepare.clean
    assert Cleaner(cfg).reject(text) == expected


def test_first_filter_wins_and_names_are_listed():
    cleaner = Cleaner(CleanConfig(min_chars=100, max_line_chars=5, drop_regex=["x"]))
    assert cleaner.reject("x" * 50) == "min_chars"
    assert cleaner.filter_names[-1] == "drop_regex[0]"


def test_bad_regex_and_bounds_are_config_errors():
    with pytest.raises(ConfigError, match=r"prepare\.clean\.drop_regex\[1\].*not a valid regular expression"):
        make_params({"clean": {"drop_regex": ["ok", "(unclosed"]}})
    with pytest.raises(ConfigError, match=r"prepare\.clean\.min_chars.*above max_chars"):
        make_params({"clean": {"min_chars": 10, "max_chars": 5}})
