"""The tokenizer stage: train (or copy) a tokenizer that transformers.AutoTokenizer can load.

Kinds (params.tokenizer.kind):
- bpe:  byte-level BPE (HF tokenizers) trained on train.jsonl, `vocab_size` entries with specials;
- char: one token per distinct character of the train text (the nanoGPT shakespeare_char
        setting), plus an unk token for characters only val (or later input) contains;
- byte: the 256 byte values; any text round-trips, nothing is trained;
- pretrained: the tokenizer of a local directory (tokenizer.path, or model.init_from's when that is set:
  continued pretraining), its files copied unchanged. No token is added: a tokenizer without a pad token
  pads with its eos (recorded as such), one without BOS (Qwen) has none, and the vocabulary stays the
  model's.

Our own kinds put the specials first: pad=0, bos=1, eos=2 (char: unk=3). The directory holds
tokenizer.json, tokenizer_config.json, special_tokens_map.json (a pretrained one: the files it came with)
and frontier_tokenizer.json (the kind, vocabulary size, ids and what it was trained on or copied from),
plus params.resolved.yaml.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frontier.config import Params
from frontier.config.data import TEMPLATES_DIR, TOKENIZER_FILES, tokenizer_source
from frontier.data.progress import Progress, bars_enabled
from frontier.errors import DataError
from frontier.provenance import record_stage
from frontier.utils.atomic import atomic_dir, write_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from frontier.config.data import TokenizerConfig

log = logging.getLogger("frontier.data.tokenizer")

INFO_FILE = "frontier_tokenizer.json"
OWN_KINDS = ("bpe", "char", "byte")  # made here, specials first; "pretrained" is copied from a directory


def iter_texts(path: Path, max_bytes: int | None = None, desc: str | None = None) -> Iterator[str]:
    """The "text" of every line of a prepared JSONL file, stopping after `max_bytes` of text."""
    if not path.is_file():
        raise DataError(f"{path}: not found (run the prepare stage first)")
    seen = 0
    with open(path, "rb") as f, Progress(desc or f"read {path.name}", path.stat().st_size) as bar:
        for lineno, line in enumerate(f, start=1):
            bar.update(nbytes=len(line), ndocs=1)
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise DataError(
                    f"{path}:{lineno}: not a prepared document line (expected JSON with a 'text' string)"
                ) from None
            yield text
            seen += len(line)
            if max_bytes is not None and seen >= max_bytes:
                return


def _specials(cfg: TokenizerConfig, with_unk: bool = False) -> list[str]:
    return [cfg.pad_token, cfg.bos_token, cfg.eos_token] + ([cfg.unk_token] if with_unk else [])


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of byte-level tokenizers."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def _mark_special(tok: Tokenizer, specials: list[str]) -> None:
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])


def build_bpe(texts: Iterator[str], cfg: TokenizerConfig) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=_specials(cfg),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=bars_enabled(),  # tokenizers' own bars: counting pairs, computing merges
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_char(texts: Iterator[str], cfg: TokenizerConfig) -> Tokenizer:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    specials = _specials(cfg, with_unk=True)
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(chars - set(specials)):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=cfg.unk_token))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()  # join without spaces
    return tok


def build_byte(cfg: TokenizerConfig) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = _specials(cfg)
    vocab = {s: i for i, s in enumerate(specials)}
    for b, ch in sorted(bytes_to_unicode().items()):
        vocab[ch] = len(specials) + b  # byte b -> id b + 3
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _wrap(tok: Tokenizer, cfg: Any) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    specials = _specials(cfg, with_unk=cfg.kind == "char")
    _mark_special(tok, specials)
    kwargs = {"bos_token": cfg.bos_token, "eos_token": cfg.eos_token, "pad_token": cfg.pad_token}
    if cfg.kind == "char":
        kwargs["unk_token"] = cfg.unk_token
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kwargs)


def _copy_pretrained(source: Path, key: str, out: Path) -> PreTrainedTokenizerFast:
    """Copy the tokenizer files of `source` (named by params `key`) into `out` byte for byte; the tokenizer."""
    if not source.is_dir():
        raise DataError(f"{key} {str(source)!r}: not a directory (expected a local tokenizer or model directory)")
    if not (source / "tokenizer.json").is_file():
        raise DataError(
            f"{key}: {source} has no tokenizer.json (a fast tokenizer is needed); save the model's tokenizer "
            "there (tokenizer.save_pretrained), or set tokenizer.kind: pretrained and tokenizer.path to where it is"
        )
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    if (source / TEMPLATES_DIR).is_dir():
        shutil.copytree(source / TEMPLATES_DIR, out / TEMPLATES_DIR)
    return load_tokenizer(out)


def pretrained_info(fast: PreTrainedTokenizerFast, source: Path) -> dict[str, Any]:
    """Vocabulary size and special ids of a pretrained tokenizer as it defines them; a missing pad is its eos."""
    info: dict[str, Any] = {
        "kind": "pretrained",
        "source": str(source.resolve()),
        "vocab_size": len(fast),
        "bos_id": fast.bos_token_id,
        "eos_id": fast.eos_token_id,
        "pad_id": fast.pad_token_id,
        "pad_is": "pad",
    }
    if info["pad_id"] is None and info["eos_id"] is not None:
        # Padding positions are masked out of the loss: any existing id serves, and a new one would need a row.
        info.update(pad_id=info["eos_id"], pad_is="eos")
        log.info("tokenizer: %s has no pad token; padding uses its eos %r (id %d), no token added",
                 source, fast.eos_token, info["eos_id"])  # fmt: skip
    return info


def framing(fast: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's own template puts before and after a text: Llama, Mistral, Gemma [bos] and [];
    Qwen, phi-2, GPT-2 none (what ``tokenizer(text)`` adds to ``tokenizer(text, add_special_tokens=False)``)."""
    probe = "def frontier(): pass"
    bare = fast(probe, add_special_tokens=False)["input_ids"]
    full = fast(probe)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise DataError(f"{fast.name_or_path}: its template changes the text's own tokens; cannot frame documents")


def _save(fast: PreTrainedTokenizerFast, out: Path, info: dict[str, Any]) -> None:
    fast.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # a name transformers 4.x and 5.x both load
    write_json(config_path, config)
    special_map = {k: v for k, v in fast.special_tokens_map.items() if isinstance(v, str)}
    write_json(out / "special_tokens_map.json", special_map)
    if not (out / "tokenizer.json").is_file():
        raise DataError(f"{out}: tokenizer has no tokenizer.json (a fast tokenizer is needed)")
    info.update(vocab_size=len(fast), bos_id=fast.bos_token_id, eos_id=fast.eos_token_id, pad_id=fast.pad_token_id)


def _own_kind(cfg: TokenizerConfig, train_path: Path) -> tuple[PreTrainedTokenizerFast, dict[str, Any]]:
    """A bpe, char or byte tokenizer made here, and what it was made from."""
    info: dict[str, Any] = {"kind": cfg.kind}
    if cfg.kind == "byte":
        tok = build_byte(cfg)
    else:
        texts = iter_texts(train_path, cfg.train_max_bytes, desc=f"tokenizer {cfg.kind}")
        tok = build_bpe(texts, cfg) if cfg.kind == "bpe" else build_char(texts, cfg)
        info["trained_on"] = str(train_path)
    return _wrap(tok, cfg), info


def train_tokenizer(params: Params, prepared_dir: Path, out_dir: Path) -> Path:
    """Run the tokenizer stage: write a loadable tokenizer directory to `out_dir` (atomically)."""
    cfg = params.tokenizer
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    source = tokenizer_source(cfg.kind, cfg.path, params.model.init_from)
    key = "tokenizer.path" if cfg.kind == "pretrained" else "model.init_from"
    if source is not None and cfg.kind != "pretrained":
        log.info("tokenizer: model.init_from is set: the model's own tokenizer from %s, unchanged "
                 "(tokenizer.kind %s applies to a model trained from scratch)", source, cfg.kind)  # fmt: skip
    with atomic_dir(out_dir) as tmp:
        if source is None:
            fast, info = _own_kind(cfg, prepared_dir / "train.jsonl")
            _save(fast, tmp, info)
        else:
            source_dir = Path(source).expanduser()
            info = pretrained_info(_copy_pretrained(source_dir, key, tmp), source_dir)
        info["sha256"] = hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()
        write_json(tmp / INFO_FILE, info)
        record_stage(params, tmp, "tokenizer")
    log.info("tokenizer: %s, vocab %d -> %s", info["kind"], info["vocab_size"], out_dir)
    return out_dir


def load_tokenizer(directory: Path | str) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory (ours or any local fast tokenizer); DataError if it cannot be."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: tokenizer directory not found (run the tokenizer stage)")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad directory; all mean the same here
        raise DataError(f"{directory}: not a loadable tokenizer ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise DataError(f"{directory}: {type(tok).__name__} is not a fast tokenizer (tokenizer.json is needed)")
    return tok
