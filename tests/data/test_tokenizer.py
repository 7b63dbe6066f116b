"""Tokenizer kinds: training, round trips, special tokens, AutoTokenizer loading, bad input."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from frontier.data.tokenizer import INFO_FILE, load_tokenizer, train_tokenizer
from frontier.errors import DataError

from .helpers import doc_text, make_params, write_jsonl

TRAIN = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n\tdef push(self, item):\n\t\tself.items.append(item)\n",
    "print('héllo wörld')  # ünïcode\n",
] + [doc_text(i, words=30) for i in range(30)]
UNSEEN = "naïve café — ∑ 😀 \x7f\n"


@pytest.fixture
def prepared(tmp_path):
    d = tmp_path / "prepared"
    d.mkdir()
    write_jsonl(d / "train.jsonl", TRAIN)
    write_jsonl(d / "val.jsonl", ["val text\n"])
    return d


def _train(tmp_path, prepared, **cfg):
    params = make_params(tokenizer=cfg)
    return train_tokenizer(params, prepared, tmp_path / f"tok_{cfg['kind']}")


def _check_common(directory, tok):
    names = {p.name for p in directory.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", INFO_FILE} <= names
    auto = AutoTokenizer.from_pretrained(str(directory))
    assert isinstance(auto, PreTrainedTokenizerFast)
    assert (auto.bos_token, auto.eos_token, auto.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    special_map = json.loads((directory / "special_tokens_map.json").read_text())
    assert special_map["eos_token"] == "<|eos|>"
    info = json.loads((directory / INFO_FILE).read_text())
    assert info["vocab_size"] == len(tok) and info["eos_id"] == 2
    # specials are single tokens inside text and vanish with skip_special_tokens
    ids = tok.encode("ab<|eos|>cd", add_special_tokens=False)
    assert 2 in ids and tok.decode(ids, skip_special_tokens=True) == "abcd"
    return auto


def test_bpe(tmp_path, prepared):
    directory = _train(tmp_path, prepared, kind="bpe", vocab_size=300, min_frequency=1)
    tok = load_tokenizer(directory)
    auto = _check_common(directory, tok)
    assert 259 < len(tok) <= 300  # 256 byte symbols + 3 specials + merges learned from the corpus
    for text in TRAIN + [UNSEEN]:
        ids = auto.encode(text, add_special_tokens=False)
        assert auto.decode(ids) == text
    assert len(tok.encode(TRAIN[5], add_special_tokens=False)) < 0.9 * len(TRAIN[5].encode())  # merges compress


def test_char(tmp_path, prepared):
    directory = _train(tmp_path, prepared, kind="char")
    tok = load_tokenizer(directory)
    _check_common(directory, tok)
    chars = sorted(set("".join(TRAIN)))
    assert len(tok) == 4 + len(chars)  # pad, bos, eos, unk + the distinct train characters
    assert [tok.convert_ids_to_tokens(4 + i) for i in range(len(chars))] == chars
    for text in TRAIN:
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == len(text) and tok.decode(ids) == text
    ids = tok.encode("a😀b", add_special_tokens=False)
    assert ids[1] == tok.unk_token_id == 3


def test_byte(tmp_path, prepared):
    directory = _train(tmp_path, prepared, kind="byte")
    tok = load_tokenizer(directory)
    _check_common(directory, tok)
    assert len(tok) == 259
    ids = tok.encode(UNSEEN, add_special_tokens=False)
    assert ids == [b + 3 for b in UNSEEN.encode()] and tok.decode(ids) == UNSEEN


def _files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_pretrained_is_copied_unchanged_and_pads_with_its_eos(tmp_path, prepared):
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "</s>": 3}, unk_token="[UNK]"))
    base.pre_tokenizer = pre_tokenizers.Whitespace()
    src = tmp_path / "external"
    PreTrainedTokenizerFast(tokenizer_object=base, eos_token="</s>", unk_token="[UNK]").save_pretrained(str(src))
    directory = _train(tmp_path, prepared, kind="pretrained", path=str(src))
    copied = _files(directory)
    assert {k: v for k, v in copied.items() if k in _files(src)} == _files(src)  # byte for byte, every file
    tok = load_tokenizer(directory)
    assert len(tok) == 4 and (tok.bos_token, tok.pad_token) == (None, None)  # nothing added
    assert tok.encode("hello world", add_special_tokens=False) == [1, 2]
    info = json.loads(copied[INFO_FILE])
    ids = [info[k] for k in ("vocab_size", "bos_id", "eos_id", "pad_id", "pad_is")]
    assert ids == [4, None, 3, 3, "eos"]  # the same vocabulary; pad: its eos, recorded as such


# A tokenizer without BOS (Qwen), one without pad (Mistral, phi-2, Llama 3), one whose template adds BOS (Gemma,
# Mistral, Llama 3); every family's own special tokens.
FAMILIES = ("qwen2", "mistral", "phi2", "gemma2", "llama3")


@pytest.mark.parametrize("family", FAMILIES)
def test_init_from_packs_with_the_models_own_tokenizer(tmp_path, prepared, family):
    """Only model.init_from set: the tokenizer stage copies the model's tokenizer unchanged, and every packed
    document is tokenizer(text)["input_ids"] of that tokenizer, then its EOS; the vocabulary is the model's."""
    from frontier.data.pack import tokenize
    from frontier.data.tokens import TokenShards
    from tests.model.families import FAMILIES as TABLE
    from tests.model.families import build_checkpoint

    model_dir = build_checkpoint(family, tmp_path / family, extra_rows=3)
    params = make_params(model={"init_from": str(model_dir)})  # tokenizer: the defaults (kind bpe)
    directory = train_tokenizer(params, prepared, tmp_path / "tokenizer")
    copied = _files(directory)
    assert all(copied[name] == data for name, data in _files(model_dir).items() if name.startswith("tokenizer"))
    own = AutoTokenizer.from_pretrained(str(model_dir))
    info = json.loads(copied[INFO_FILE])
    assert info["vocab_size"] == len(own) and (info["bos_id"], info["eos_id"]) == (own.bos_token_id, own.eos_token_id)
    fam = TABLE[family]
    assert info["pad_id"] == (own.pad_token_id if fam.pad else own.eos_token_id)

    tokenize(params, prepared, directory, tmp_path / "tokens", workers=1)
    shards = TokenShards(tmp_path / "tokens" / "train")
    assert (shards.vocab_size, shards.bos_id, shards.eos_id) == (len(own), own.bos_token_id, own.eos_token_id)
    ends = [*shards.doc_starts.tolist()[1:], len(shards)]
    docs = [shards.read(a, b - a).tolist() for a, b in zip(shards.doc_starts.tolist(), ends)]
    assert len(docs) == len(TRAIN)
    for text, doc in zip(TRAIN, docs):
        assert doc == own(text)["input_ids"] + [own.eos_token_id]
    assert (docs[0][0] == own.bos_token_id) == fam.add_bos  # Gemma, Mistral, Llama 3 begin with BOS; Qwen never


def test_bad_inputs(tmp_path, prepared):
    with pytest.raises(DataError, match="not a directory"):
        _train(tmp_path, prepared, kind="pretrained", path=str(tmp_path / "missing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer.json").write_text("{broken")
    with pytest.raises(DataError, match="not a loadable tokenizer"):
        _train(tmp_path, prepared, kind="pretrained", path=str(tmp_path / "junk"))
    with pytest.raises(DataError, match="train.jsonl: not found"):
        _train(tmp_path, tmp_path / "nowhere", kind="char")
    (prepared / "train.jsonl").write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: not a prepared document line"):
        _train(tmp_path, prepared, kind="bpe")
    assert not (tmp_path / "tok_bpe").exists()
    with pytest.raises(DataError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "none")
