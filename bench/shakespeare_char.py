"""Reproduce nanoGPT's shakespeare_char CPU run with Frontier's stages and report val loss / time / speed.

    python bench/shakespeare_char.py --data /path/to/tinyshakespeare.txt [--work runs/shakespeare_char]
        [--params configs/shakespeare_char.yaml] [--set train.max_steps=500 ...]

The data split is nanoGPT's, not `prepare`'s: the first 90% of the characters train, the last
10% validate (prepare would see the file as one document). Each split is written as a prepared
JSONL document, then Frontier's own tokenizer (kind=char), tokenize and train stages run on it.
Target (nanoGPT README): best val loss <= 1.88. Exit code 0 when met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.88


def nanogpt_split(data: Path, prepared: Path) -> dict[str, int]:
    """prepared/{train,val}.jsonl, one document each: text[:90%] and text[90%:] by characters."""
    text = data.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    prepared.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", text[:cut]), ("val", text[cut:])):
        with open(prepared / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.write(json.dumps({"text": part, "source": "shakespeare"}) + "\n")
    return {"chars": len(text), "train_chars": cut, "val_chars": len(text) - cut}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare.txt")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "shakespeare_char")
    parser.add_argument("--params", type=Path, default=REPO / "configs" / "shakespeare_char.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fresh", action="store_true", help="delete --work first (no resume)")
    args = parser.parse_args(argv)

    import torch

    from frontier.config import load_params
    from frontier.data.pack import tokenize
    from frontier.data.tokenizer import train_tokenizer
    from frontier.errors import FrontierError
    from frontier.train.run import train

    if not args.data.is_file():
        print(f"--data: {args.data} not found (pass your copy of tinyshakespeare.txt)", file=sys.stderr)
        return 2
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    work = args.work
    try:
        params = load_params(args.params, args.overrides)  # prepare.sources is unused: the split is made here
        split = nanogpt_split(args.data, work / "prepared")
        train_tokenizer(params, work / "prepared", work / "tokenizer")
        tokenize(params, work / "prepared", work / "tokenizer", work / "tokens")
        start = time.perf_counter()
        metrics = train(params, work / "tokens", work / "tokenizer", work / "train", work / "checkpoints")
        elapsed = time.perf_counter() - start
    except FrontierError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    vocab = json.loads((work / "tokenizer" / "frontier_tokenizer.json").read_text()).get("vocab_size")
    report = {
        "best_val_loss": metrics["best_val_loss"],
        "final_val_loss": metrics["final_val_loss"],
        "train_loss": metrics["train_loss"],
        "steps": metrics["steps"],
        "tokens_per_s": round(metrics["tokens_per_s"]),
        "train_time_s": round(metrics["train_time_s"], 1),
        "stage_wall_s": round(elapsed, 1),
        # what the train stage ran with: torch reads OMP_NUM_THREADS at import, the stage sets no count itself
        "torch_threads": torch.get_num_threads(),
        "params": metrics["params"],
        "vocab_size": vocab,
        **split,
        "target": TARGET,
        "met": metrics["best_val_loss"] is not None and metrics["best_val_loss"] <= TARGET,
    }
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
