"""Schemas of the data stages: prepare, tokenizer, tokenize.

Source weights (``prepare.sources[].weight``) shape the *training* mixture deterministically:
every unique train document of a source is written ``floor(weight)`` times, plus once more when
a hash of its content falls below ``weight - floor(weight)``. So 2.0 doubles a source, 0.5 keeps
(about) half of its documents, 1.5 doubles half of them; the same documents are picked on every
machine and run. Validation documents are written once whatever the weight, so the val loss
measures each document once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from frontier.config.fields import bounds
from frontier.utils.safe_regex import unsafe_regex


@dataclass
class SourceConfig:
    """One input corpus.

    kind=stdlib reads the running interpreter's standard-library .py files (site-/dist-packages
    excluded). kind=files reads `path`: a file, a directory (walked recursively, hidden entries
    skipped) or a glob (``**`` recurses). `format` auto picks by extension under any compression
    suffix: .jsonl/.ndjson/.json -> jsonl (one document per line, the `text_field` string),
    .parquet -> parquet (the `text_field` column, one document per row), anything else -> text
    (one document per file). Compression (.gz, .zst, .xz) is recognised by the last suffix.
    """

    name: str = "stdlib"
    kind: Literal["stdlib", "files"] = "stdlib"
    path: str | None = None  # file, directory or glob (kind=files)
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    compression: Literal["auto", "none", "gzip", "zstd", "xz"] = "auto"
    text_field: str = "text"  # JSONL field / Parquet column holding the document text
    weight: float = field(default=1.0, metadata=bounds(gt=0, le=100))

    def validate(self) -> None:
        if self.kind == "files" and not self.path:
            raise ValueError("path: required when kind is 'files' (a file, directory or glob)")
        if not self.name or not re.fullmatch(r"[\w.-]+", self.name):
            raise ValueError(f"name: {self.name!r} must be non-empty letters, digits, '_', '-' or '.'")


@dataclass
class CleanConfig:
    """Normalisation and document filters; each filter's drop count is reported.

    Filters run in this order and a dropped document counts under the first that drops it:
    min_chars, max_chars, max_line_chars, min_alnum_ratio, max_repeated_line_ratio (share of
    non-blank lines repeating an earlier line), drop_regex[i] (a document matching any pattern).
    """

    nfc: bool = True
    strip_control: bool = True  # also turns \r\n and lone \r into \n; keeps \n and \t
    min_chars: int = field(default=32, metadata=bounds(ge=0))
    max_chars: int = field(default=1_000_000, metadata=bounds(ge=1))
    max_line_chars: int = field(default=10_000, metadata=bounds(ge=1))
    min_alnum_ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1))
    max_repeated_line_ratio: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    drop_regex: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars: {self.min_chars} is above max_chars {self.max_chars}")
        for i, pattern in enumerate(self.drop_regex):
            why = unsafe_regex(pattern)  # it runs over every document: refuse what cannot compile or may stall
            if why:
                raise ValueError(f"drop_regex[{i}]: {pattern[:80]!r}: {why}")


@dataclass
class DedupConfig:
    """Exact (content hash) and near-duplicate (MinHash + LSH over word n-gram shingles) removal.

    Near duplicates are pairs whose estimated Jaccard similarity of `shingle_size`-word shingles
    is at least `threshold`; each connected cluster keeps its document with the smallest id.
    """

    exact: bool = True
    near: bool = True
    threshold: float = field(default=0.8, metadata=bounds(gt=0, le=1))
    num_perm: int = field(default=128, metadata=bounds(ge=8, le=1024))
    shingle_size: int = field(default=5, metadata=bounds(ge=1))


@dataclass
class PrepareConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    # share of unique documents held out, chosen by content hash; val gets at least one document
    val_fraction: float = field(default=0.05, metadata=bounds(gt=0, lt=1))
    encoding_errors: Literal["replace", "skip"] = "replace"  # invalid UTF-8: U+FFFD, or drop the document
    # a truncated or corrupt compressed file: count it and keep what was read before the damage, or stop
    corrupt_files: Literal["count", "fail"] = "count"
    # a bad record (malformed or non-object JSON, a missing / non-string text field, a lone surrogate, a line
    # past 4 * clean.max_chars bytes): counted in stats.json and skipped, the rest of its file kept; or, when
    # true, the end of the stage in one error naming file, line and what was wrong
    strict: bool = False
    max_docs: int | None = field(default=None, metadata=bounds(ge=1))  # per source, in sorted file order
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def validate(self) -> None:
        names = [s.name for s in self.sources]
        if not names:
            raise ValueError("sources: expected at least one source")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"sources: source names must be unique, {sorted(dup)[0]!r} repeats")


# The files of a Hugging Face model directory that make up its tokenizer (transformers 4.x and 5.x names),
# copied unchanged by the tokenizer stage; the weights and config.json are not among them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
TEMPLATES_DIR = "additional_chat_templates"  # transformers 5: named chat templates, one .jinja file each


@dataclass
class TokenizerConfig:
    """kind: bpe (byte-level BPE trained on train.jsonl), char (the distinct characters of the train
    text + specials + unk), byte (256 bytes + specials), pretrained (the tokenizer of a local directory,
    `path`, copied unchanged). With model.init_from set, the tokenizer stage copies that model's own
    tokenizer whatever the kind (tokenizer_source): a tokenizer trained here would not match its embeddings.
    The *_token names are the specials of our own kinds; a pretrained tokenizer keeps its own."""

    kind: Literal["bpe", "char", "byte", "pretrained"] = "bpe"
    vocab_size: int = field(default=4096, metadata=bounds(ge=64, le=1 << 20))  # bpe only, specials included
    min_frequency: int = field(default=2, metadata=bounds(ge=1))
    train_max_bytes: int | None = field(default=None, metadata=bounds(ge=1))  # bpe/char: train on a prefix
    path: str | None = None  # kind=pretrained: a local tokenizer directory
    bos_token: str = "<|bos|>"
    eos_token: str = "<|eos|>"
    pad_token: str = "<|pad|>"
    unk_token: str = "<|unk|>"  # char only: characters never seen in the train text

    def validate(self) -> None:
        if self.kind == "pretrained" and not self.path:
            raise ValueError("path: required when kind is 'pretrained' (a local tokenizer directory)")
        specials = [self.bos_token, self.eos_token, self.pad_token, self.unk_token]
        if any(not s for s in specials) or len(set(specials)) != len(specials):
            raise ValueError("bos_token: bos/eos/pad/unk tokens must be non-empty and distinct")


def tokenizer_source(kind: str, path: str | None, init_from: str | None) -> str | None:
    """The local directory whose tokenizer the tokenizer stage copies: `path` for kind pretrained, else the
    model.init_from directory (continued pretraining), else None (a tokenizer of our own kind is made)."""
    if kind == "pretrained":
        return path
    return init_from or None


@dataclass
class TokenizeConfig:
    workers: int = field(default=0, metadata=bounds(ge=0))  # 0: the cores the stage was given
    shard_tokens: int = field(default=1 << 24, metadata=bounds(ge=1024))
    # an EOS after every document (the boundary the model sees). A pretrained tokenizer's own template ids
    # (Llama's, Gemma's BOS) frame every document whatever these say, as tokenizer(text) has them.
    append_eos: bool = True
    prepend_bos: bool = False  # a BOS before every document that the template does not already begin with
    batch_docs: int = field(default=256, metadata=bounds(ge=1))
