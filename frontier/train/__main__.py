"""``python -m frontier.train``: the train stage as a launcher target, one process per rank.

    deepspeed --num_gpus 8 --module frontier.train --params params.yaml --tokens data/tokens \\
        --tokenizer data/tokenizer --out runs/train --checkpoints checkpoints/train
    torchrun --nproc_per_node 8 -m frontier.train ...        (same arguments)

Exit codes: 0 done, 3 stopped by a signal after saving a checkpoint (rerun to resume), and the
FrontierError codes (2) for a bad config, data or checkpoint. ``frontier train`` does the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frontier.config import load_params
from frontier.errors import FrontierError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontier.train", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=None, help="parameter file (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        from frontier.train.run import train

        train(params, args.tokens, args.tokenizer, args.out, args.checkpoints)
    except FrontierError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
