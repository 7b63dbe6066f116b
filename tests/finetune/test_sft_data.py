"""Docstring -> body pairs from prepared documents: extraction, filters, deterministic split."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from pathlib import Path

import pytest

from frontier.config import load_params
from frontier.errors import DataError
from frontier.finetune.sft_data import build_sft_pairs, extract_pairs

SOURCE = textwrap.dedent(
    '''
    def add(a, b):
        """Add two numbers."""
        total = a + b
        return total


    class Box:
        def get(self, key, default=None):
            """Return the item for key.

            Falls back to default.
            """
            if key in self.items:
                return self.items[key]
            return default

        def nodoc(self):
            return 1

        def only_doc(self):
            """Nothing else."""

    async def fetch(url):
        """Fetch url."""
        return await get(url)
    '''
)


def prepared_dir(root: Path, modules: list[str], reverse: bool = False) -> Path:
    """train.jsonl / val.jsonl of real standard-library sources, as the prepare stage writes them."""
    import importlib

    texts = [inspect.getsource(importlib.import_module(m)) for m in modules]
    docs = [{"text": t, "source": "stdlib", "id": m} for t, m in zip(texts, modules)]
    docs.append({"text": "this is not python (", "source": "stdlib", "id": "broken"})
    if reverse:
        docs.reverse()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        for d in docs[:-2]:
            f.write(json.dumps(d) + "\n")
    with open(root / "val.jsonl", "w", encoding="utf-8") as f:
        for d in docs[-2:]:
            f.write(json.dumps(d) + "\n")
    return root


MODULES = [
    "statistics",
    "textwrap",
    "shlex",
    "fractions",
    "string",
    "difflib",
    "calendar",
    "ipaddress",
    "pathlib",
    "configparser",
]


def test_extract_pairs_splits_after_the_docstring_and_dedents():
    pairs = dict(extract_pairs(SOURCE))
    assert pairs['def add(a, b):\n    """Add two numbers."""\n'] == "total = a + b\nreturn total\n".replace(
        "total =", "    total ="
    ).replace("return", "    return")
    get_prompt = next(p for p in pairs if p.startswith("def get"))
    assert get_prompt.endswith('    Falls back to default.\n    """\n')
    assert pairs[get_prompt].startswith("    if key in self.items:\n")
    assert any(p.startswith("async def fetch") for p in pairs)
    assert not any("nodoc" in p or "only_doc" in p for p in pairs)  # no docstring / nothing after it


def test_extract_pairs_rejects_non_python():
    with pytest.raises(SyntaxError):
        list(extract_pairs("def broken(:\n"))


def test_build_sft_pairs_is_deterministic_and_split(tmp_path):
    params = load_params(None, ["finetune.heldout_fraction=0.2"])
    stats = build_sft_pairs(params, prepared_dir(tmp_path / "p1", MODULES), tmp_path / "out1")
    again = build_sft_pairs(params, prepared_dir(tmp_path / "p2", MODULES, reverse=True), tmp_path / "out2")
    assert stats == again
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes()
    train = [json.loads(line) for line in (tmp_path / "out1" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "out1" / "heldout.jsonl").read_text().splitlines()]
    assert stats["train"] == len(train) and stats["heldout"] == len(held) and stats["pairs"] == len(train) + len(held)
    assert stats["documents_not_python"] == 1
    assert 0.05 < len(held) / stats["pairs"] < 0.4  # 0.2 +- 5 binomial standard deviations at ~100 pairs
    assert not {r["prompt"] + r["response"] for r in train} & {r["prompt"] + r["response"] for r in held}
    cfg = params.finetune
    for rec in train + held:
        head = ast.parse(rec["prompt"] + "    pass\n").body[0]  # the prompt is a def line plus its docstring
        assert isinstance(head, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(head)
        assert cfg.min_response_chars <= len(rec["response"]) <= cfg.max_response_chars
        compile(rec["prompt"] + rec["response"], "<pair>", "exec")  # prompt + response is the whole function


def test_max_pairs_caps_the_output(tmp_path):
    params = load_params(None, ["finetune.max_pairs=20", "finetune.heldout_fraction=0.3"])
    stats = build_sft_pairs(params, prepared_dir(tmp_path / "p", MODULES), tmp_path / "out")
    assert stats["pairs"] == 20


def test_too_few_pairs_is_a_data_error(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "train.jsonl").write_text(json.dumps({"text": "x = 1\n", "source": "s", "id": "1"}) + "\n")
    with pytest.raises(DataError, match="both must be non-empty"):
        build_sft_pairs(load_params(None), root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_prepared_files_are_named(tmp_path):
    with pytest.raises(DataError, match="train.jsonl nor val.jsonl"):
        build_sft_pairs(load_params(None), tmp_path, tmp_path / "out")
