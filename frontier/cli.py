"""`frontier <stage> ...`: the command every Snakemake rule and DVC stage calls.

Each subcommand is a thin wrapper: parse paths, load and validate params (with ``--set``
overrides), call the stage's importable function. Errors a user can cause (FrontierError)
end as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frontier.errors import FrontierError
from frontier.train.launch import die_with_launcher, report_rank_error

if TYPE_CHECKING:
    from frontier.config import Params

log = logging.getLogger("frontier")


def _call(target: str, *args: Any, **kwargs: Any) -> Any:
    """Import ``module:function`` lazily (a stage's heavy imports cost nothing for the others)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


def _params(ns: argparse.Namespace) -> Any:
    from frontier.config import load_params

    return load_params(ns.params, ns.overrides)


def cmd_prepare(ns: argparse.Namespace) -> Any:
    return _call("frontier.data.prepare:prepare", _params(ns), Path(ns.out))


def cmd_tokenizer(ns: argparse.Namespace) -> Any:
    return _call("frontier.data.tokenizer:train_tokenizer", _params(ns), Path(ns.data), Path(ns.out))


def cmd_tokenize(ns: argparse.Namespace) -> Any:
    # workers 0: tokenize.workers from params, else every core this process may use
    return _call(
        "frontier.data.pack:tokenize", _params(ns), Path(ns.data), Path(ns.tokenizer), Path(ns.out), workers=ns.workers
    )


def _launched(ns: argparse.Namespace, params: Params) -> bool:
    """Start this stage's ranks (launch: section) when it needs several and no launcher started it yet."""
    from frontier.train.launch import check_outer_launcher, launch_ranks, should_launch

    if not should_launch(params.launch):
        check_outer_launcher(params.launch, ns.command)
        return False
    launch_ranks(params.launch, ns.argv, ns.command)
    return True


def cmd_train(ns: argparse.Namespace) -> Any:
    params = _params(ns)
    if _launched(ns, params):
        return None
    return _call(
        "frontier.train.run:train",
        params,
        Path(ns.data),
        Path(ns.tokenizer),
        Path(ns.out),
        Path(ns.checkpoints),
    )


def cmd_evaluate(ns: argparse.Namespace) -> Any:
    prepared = Path(ns.prepared) if ns.prepared else None
    return _call("frontier.eval.evaluate:evaluate", _params(ns), Path(ns.model), Path(ns.data), Path(ns.out), prepared)


def cmd_sft_data(ns: argparse.Namespace) -> Any:
    return _call("frontier.finetune.sft_data:build_sft_pairs", _params(ns), Path(ns.data), Path(ns.out))


def cmd_finetune(ns: argparse.Namespace) -> Any:
    params = _params(ns)
    if _launched(ns, params):
        return None
    return _call(
        "frontier.finetune.lora:finetune",
        params,
        Path(ns.model),
        Path(ns.data),
        Path(ns.out),
        Path(ns.checkpoints),
    )


def cmd_merge(ns: argparse.Namespace) -> Any:
    return _call("frontier.finetune.lora:merge", Path(ns.adapter), Path(ns.out))


def cmd_passk(ns: argparse.Namespace) -> Any:
    return _call("frontier.eval.passk:run_passk", _params(ns), Path(ns.model), Path(ns.problems), Path(ns.out))


def cmd_report(ns: argparse.Namespace) -> Any:
    finetune = Path(ns.finetune) if ns.finetune else None
    eval_finetuned = Path(ns.eval_finetuned) if ns.eval_finetuned else None
    return _call(
        "frontier.report.build:build_report",
        _params(ns),
        Path(ns.train),
        Path(ns.eval),
        Path(ns.out),
        finetune,
        eval_finetuned,
    )


def cmd_check(ns: argparse.Namespace) -> Any:
    """Validate a params file (and overrides); print the resolved parameters."""
    import yaml

    from frontier.config import to_dict

    params = _params(ns)
    sys.stdout.write(yaml.safe_dump(to_dict(params), sort_keys=False))
    return None


def cmd_env(ns: argparse.Namespace) -> Any:
    from frontier.utils.envinfo import collect_env, format_env

    sys.stdout.write(format_env(collect_env()) + "\n")
    return None


def cmd_dvc_yaml(ns: argparse.Namespace) -> Any:
    from frontier.pipeline import render_dvc_yaml

    text = render_dvc_yaml()
    if ns.check:
        current = Path(ns.path).read_text(encoding="utf-8") if Path(ns.path).is_file() else ""
        if current != text:
            raise FrontierError(f"{ns.path} is out of date with frontier/pipeline.py: run `frontier dvc-yaml`")
        return None
    from frontier.utils.atomic import atomic_file

    with atomic_file(ns.path) as f:
        f.write(text)
    return None


def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="the parameter file (default: params.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, e.g. --set optimizer.lr=3e-4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    from frontier import __version__

    parser = argparse.ArgumentParser(prog="frontier", description="Frontier: reproducible LLM training stages.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"frontier {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def stage(name: str, fn: Callable[[argparse.Namespace], Any], help: str, **paths: str) -> None:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        _add_params(p)
        for flag, text in paths.items():
            optional = text.startswith("?")
            p.add_argument(f"--{flag.replace('_', '-')}", required=not optional, help=text.lstrip("?"))

    stage("prepare", cmd_prepare, "read sources, clean, dedup, split into train/val documents", out="output directory")
    stage(
        "tokenizer",
        cmd_tokenizer,
        "train (or copy) the tokenizer",
        data="prepared documents directory",
        out="output tokenizer directory",
    )
    stage(
        "tokenize",
        cmd_tokenize,
        "encode and pack documents into token shards",
        data="prepared documents directory",
        tokenizer="tokenizer directory",
        out="output tokens directory",
    )
    sub.choices["tokenize"].add_argument(
        "--workers", type=_count, default=0, help="worker processes (default: tokenize.workers, else all cores)"
    )
    stage(
        "train",
        cmd_train,
        "train a causal LM with DeepSpeed",
        data="tokens directory",
        tokenizer="tokenizer directory",
        out="output run directory",
        checkpoints="checkpoint directory (kept between runs for resume)",
    )
    stage(
        "evaluate",
        cmd_evaluate,
        "val loss, perplexity, bits-per-byte, samples",
        model="Hugging Face model directory",
        data="tokens directory",
        out="output directory",
        prepared="?prepared documents directory (per-source figures)",
    )
    stage(
        "sft-data",
        cmd_sft_data,
        "build prompt/response pairs for the fine-tune demo",
        data="prepared documents directory",
        out="output directory",
    )
    stage(
        "finetune",
        cmd_finetune,
        "LoRA fine-tune a model on prompt/response pairs",
        model="base Hugging Face model directory",
        data="fine-tune data directory",
        out="output directory",
        checkpoints="checkpoint directory (kept between runs for resume)",
    )
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model")
    p.set_defaults(fn=cmd_merge)
    p.add_argument("--adapter", required=True, help="adapter directory")
    p.add_argument("--out", required=True, help="output model directory")
    stage(
        "passk",
        cmd_passk,
        "pass@k on HumanEval-format problems in a sandbox",
        model="Hugging Face model directory",
        problems="problems JSONL",
        out="output directory",
    )
    stage(
        "report",
        cmd_report,
        "HTML report with curves, metrics, samples and config",
        train="train run directory",
        eval="evaluate output directory",
        out="output directory",
        finetune="?finetune output directory",
        eval_finetuned="?evaluate output directory of the fine-tuned model",
    )
    for name in ("train", "finetune"):
        # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
        sub.choices[name].add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    stage("check", cmd_check, "validate params and print the resolved values")
    p = sub.add_parser("env", help="versions, extension ops, GPU and its peak figures")
    p.set_defaults(fn=cmd_env)
    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from frontier/pipeline.py")
    p.set_defaults(fn=cmd_dvc_yaml)
    p.add_argument("--path", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="fail if the file differs instead of writing it")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(argv)
    ns.argv = argv  # what a stage that starts its own ranks runs again in each of them
    if not sys.stderr.isatty():  # a log file: no library progress bars either (their \r frames are noise)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    die_with_launcher()  # a rank of a stage that started its own ranks ends (checkpointing) with that stage
    try:
        return _run(ns)
    except Exception as exc:  # a bug, not a user's error: the traceback goes to stderr as usual
        report_rank_error(f"{exc.__class__.__name__}: {exc}", 1)  # and its last line to a launcher, if any
        raise


def _run(ns: argparse.Namespace) -> int:
    """Run the stage; an error a user can cause ends as one line on stderr (and to a launcher) and an exit code."""
    try:
        ns.fn(ns)
    except KeyboardInterrupt:
        sys.stderr.write(f"frontier {ns.command}: interrupted\n")
        return 130
    except (FrontierError, OSError, MemoryError) as exc:
        explained = _explain(exc, ns)
        if explained is None:
            raise
        message, code = explained
        sys.stderr.write(f"frontier {ns.command}: error: {message}\n")
        report_rank_error(message, code)
        return code
    return 0


def _explain(exc: BaseException, ns: argparse.Namespace) -> tuple[str, int] | None:
    """(one line, exit code) for an error a user can cause; None for a bug (its traceback is shown)."""
    if isinstance(exc, FrontierError):
        return str(exc), exc.exit_code
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        # A path the user gave is wrong; name it without a traceback.
        return f"{exc.strerror}: {exc.filename or ''}", 2
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        # A write failed for lack of room or a read-only mount: the atomic output left nothing half-written.
        where = exc.filename or getattr(ns, "out", None) or getattr(ns, "checkpoints", None) or "the output"
        return f"{exc.strerror} while writing {where}; {_DISK_ERRORS[exc.errno]}", 2
    if isinstance(exc, MemoryError):
        return (
            "out of memory; lower this stage's sizes in params.yaml (for example prepare.max_docs, "
            "prepare.clean.max_chars, train.micro_batch_size) or run it on a machine with more memory",
            2,
        )
    return None


_DISK_ERRORS = {
    errno.ENOSPC: "free some space or point the output at another disk",
    errno.EDQUOT: "the disk quota is used up: free some space or point the output at another disk",
    errno.EROFS: "the file system is read-only: point the output at a writable directory",
}


if __name__ == "__main__":
    sys.exit(main())
