"""Tiny, offline building blocks shared by the eval, finetune and report tests.

A byte-level BPE tokenizer trained in memory on a few strings and a randomly initialised
LlamaForCausalLM of a few thousand parameters, saved as a Hugging Face directory. Nothing is
downloaded.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny matmuls on a shared 2-core machine: one intra-op thread is ~50x faster than two that
    spin waiting for each other. Module scope, so it is in force before module-scoped fixtures
    run; restored after the module so no other test sees the change."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def corpus_texts(count: int = 40) -> list[str]:
    """Real Python source: the bodies of a few standard-library modules, split into chunks."""
    import json
    import textwrap as tw

    source = inspect.getsource(tw) + inspect.getsource(json.decoder)
    chunks = [c for c in source.split("\n\n\n") if len(c) > 40]
    return (chunks * (count // len(chunks) + 1))[:count]


def make_tokenizer(texts: list[str], vocab_size: int = 320):
    """A PreTrainedTokenizerFast (byte-level BPE) trained on `texts`, with bos/eos/pad specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1], pad_token=SPECIALS[2]
    )


def make_model(vocab_size: int, *, hidden: int = 32, layers: int = 2, context: int = 64, seed: int = 0):
    """A tiny LlamaForCausalLM with random weights (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def save_model_dir(path: Path, texts: list[str] | None = None, **model_kwargs) -> Path:
    """A complete HF directory (safetensors + config + tokenizer) for a fresh tiny model."""
    tokenizer = make_tokenizer(texts or corpus_texts())
    model = make_model(len(tokenizer), **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def write_program(body: str) -> str:
    """Dedent a test's inline program text."""
    return textwrap.dedent(body).strip() + "\n"


def encode_docs(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids followed by EOS, as the packer stores documents."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def write_tokens(tokens_dir: Path, tokenizer, train: list[str], val: list[str]) -> Path:
    """<tokens_dir>/train and /val split directories in the format the packer writes."""
    from frontier.data.tokens import write_split

    for name, texts in (("train", train), ("val", val)):
        write_split(
            Path(tokens_dir) / name,
            encode_docs(tokenizer, texts),
            vocab_size=len(tokenizer),
            eos_id=tokenizer.eos_token_id,
            num_bytes=sum(len(t.encode("utf-8")) for t in texts),
        )
    return Path(tokens_dir)


TRAIN_OVERRIDES = (
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.max_seq_len=64",
    "train.max_steps=30",
    "train.micro_batch_size=8",
    "train.eval_every=10",
    "train.eval_batches=2",
    "train.log_every=5",
    "engine.monitor.progress_bar=false",
    "engine.monitor.system_every_s=0",
    "optimizer.lr=3e-3",
    "schedule.warmup_steps=5",
)


@functools.lru_cache(maxsize=1)
def trained_run() -> dict[str, Path]:
    """One tiny run of the real train stage (DeepSpeed on the CPU), shared by every test of a session.

    Returns the paths: tokenizer, tokens, out (the train stage's out_dir, with model/), ckpt, root.
    """
    from frontier.config import load_params
    from frontier.train.run import train

    root = Path(tempfile.mkdtemp(prefix="frontier-tiny-run-"))
    atexit.register(shutil.rmtree, root, True)
    texts = corpus_texts(40)
    tokenizer = make_tokenizer(texts)
    tokenizer.save_pretrained(root / "tokenizer")
    write_tokens(root / "tokens", tokenizer, texts[:34], texts[34:])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            load_params(None, list(TRAIN_OVERRIDES)), root / "tokens", root / "tokenizer", root / "out", root / "ckpt"
        )
    finally:
        torch.set_num_threads(before)
    return {
        "root": root,
        "tokenizer": root / "tokenizer",
        "tokens": root / "tokens",
        "out": root / "out",
        "ckpt": root / "ckpt",
    }
