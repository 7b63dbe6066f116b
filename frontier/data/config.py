"""Schemas of the data stages: prepare, tokenizer, tokenize."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frontier.config_fields import bounds


@dataclass
class SourceConfig:
    """One input corpus. kind=stdlib reads the running interpreter's standard-library .py files."""

    name: str = "stdlib"
    kind: Literal["stdlib", "files"] = "stdlib"
    path: str | None = None  # file, directory or glob (kind=files)
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = "text"  # JSONL field / Parquet column holding the document text
    weight: float = field(default=1.0, metadata=bounds(gt=0))

    def validate(self) -> None:
        if self.kind == "files" and not self.path:
            raise ValueError("path: required when kind is 'files' (a file, directory or glob)")


@dataclass
class CleanConfig:
    """Normalisation and document filters; each filter's drop count is reported."""

    nfc: bool = True
    strip_control: bool = True
    min_chars: int = field(default=32, metadata=bounds(ge=0))
    max_chars: int = field(default=1_000_000, metadata=bounds(ge=1))
    max_line_chars: int = field(default=10_000, metadata=bounds(ge=1))
    min_alnum_ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1))
    max_repeated_line_ratio: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    drop_regex: list[str] = field(default_factory=list)


@dataclass
class DedupConfig:
    """Exact (content hash) and near-duplicate (MinHash + LSH) removal."""

    exact: bool = True
    near: bool = True
    threshold: float = field(default=0.8, metadata=bounds(gt=0, le=1))
    num_perm: int = field(default=128, metadata=bounds(ge=8))
    shingle_size: int = field(default=5, metadata=bounds(ge=1))


@dataclass
class PrepareConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    val_fraction: float = field(default=0.05, metadata=bounds(gt=0, lt=1))
    encoding_errors: Literal["replace", "skip"] = "replace"
    max_docs: int | None = field(default=None, metadata=bounds(ge=1))
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def validate(self) -> None:
        names = [s.name for s in self.sources]
        if not names:
            raise ValueError("sources: expected at least one source")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"sources: source names must be unique, {sorted(dup)[0]!r} repeats")


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "char", "byte", "pretrained"] = "bpe"
    vocab_size: int = field(default=4096, metadata=bounds(ge=64))  # bpe only
    min_frequency: int = field(default=2, metadata=bounds(ge=1))
    path: str | None = None  # kind=pretrained: a local tokenizer directory
    bos_token: str = "<|bos|>"
    eos_token: str = "<|eos|>"
    pad_token: str = "<|pad|>"

    def validate(self) -> None:
        if self.kind == "pretrained" and not self.path:
            raise ValueError("path: required when kind is 'pretrained' (a local tokenizer directory)")


@dataclass
class TokenizeConfig:
    workers: int = field(default=0, metadata=bounds(ge=0))  # 0: the cores the stage was given
    shard_tokens: int = field(default=1 << 24, metadata=bounds(ge=1024))
    append_eos: bool = True
    batch_docs: int = field(default=256, metadata=bounds(ge=1))
