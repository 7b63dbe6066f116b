"""`frontier <stage> ...`: the command every Snakemake rule and DVC stage calls.

A subcommand per stage of frontier/pipeline.py, built in one loop, all run by `_run_stage`: load and
validate params (with ``--set`` overrides), start the stage's ranks where it launches them, call its
entry function with its path flags. Errors a user can cause (FrontierError) end as one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frontier.errors import FrontierError, ResourceError, exception_chain, first_line, out_of_memory
from frontier.pipeline import ALL_STAGES, DEEPSPEED_FLOOR_MIB, TORCH_FLOOR_MIB, Stage
from frontier.train.launch.launch import die_with_launcher, report_rank_error

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


def _launched(ns: argparse.Namespace, params: Params) -> bool:
    """Start this stage's ranks (launch: section) when it needs several and no launcher started it yet."""
    from frontier.train.launch.launch import check_outer_launcher, launch_ranks, should_launch

    if not should_launch(params.launch):
        check_outer_launcher(params.launch, ns.command)
        return False
    launch_ranks(params.launch, ns.argv, ns.command)
    return True


def _run_stage(ns: argparse.Namespace) -> Any:
    """Every stage's subcommand: its entry function on params (unless it reads none) and its path flags,
    required ones first, then optional ones (None when absent), and workers= for a parallel stage."""
    stage: Stage = ns.stage
    args: list[Any] = []
    if stage.params:
        params = _params(ns)
        from frontier.pipeline import check_dvc_deps

        check_dvc_deps(stage, params)  # under `dvc repro`: dvc.yaml lists the checkpoint files it reads
        if stage.launches and _launched(ns, params):
            return None
        args.append(params)
    for flag in stage.cli_flags:
        value = getattr(ns, flag.name)
        args.append(None if value is None else Path(value))
    # workers 0: <stage>.workers from params, else every core this process may use
    workers = {"workers": ns.workers} if stage.parallel else {}
    return _call(stage.entry, *args, **workers)


def cmd_check(ns: argparse.Namespace) -> Any:
    """Validate a params file (and overrides); print the resolved parameters."""
    import yaml

    from frontier.config import to_dict

    params = _params(ns)
    sys.stdout.write(yaml.safe_dump(to_dict(params), sort_keys=False))
    return None


def cmd_env(ns: argparse.Namespace) -> Any:
    from frontier.envinfo import collect_env, format_env

    sys.stdout.write(format_env(collect_env()) + "\n")
    return None


def cmd_dvc_yaml(ns: argparse.Namespace) -> Any:
    from frontier.config import load_params, to_dict
    from frontier.pipeline import render_dvc_yaml

    # params decide one thing here: the files of a model.init_from directory, deps of the stages reading it
    absent = ns.params == "params.yaml" and not Path(ns.params).is_file()  # the default file: the defaults
    params = load_params(None if absent else ns.params, ns.overrides)
    text = render_dvc_yaml(to_dict(params))
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

    # Each subparser carries its address_floor_mib: the address space (frontier.pipeline's floors) below
    # which the command cannot even start, refused up front. Tools that import no torch (check, dvc-yaml)
    # have None: they are not checked.
    for stage in ALL_STAGES.values():
        if stage.subcommand in sub.choices:
            continue  # evaluate_finetuned: `frontier evaluate` on other paths (pipeline.py checks they agree)
        p = sub.add_parser(stage.subcommand, help=stage.help, description=stage.help)
        p.set_defaults(fn=_run_stage, stage=stage, address_floor_mib=stage.address_floor_mib)
        if stage.params:
            _add_params(p)
        for flag in stage.cli_flags:
            p.add_argument(flag.option, required=flag.required, help=flag.help)
        if stage.parallel:
            p.add_argument(
                "--workers",
                type=_count,
                default=0,
                help=f"worker processes (default: {stage.name}.workers, else all cores)",
            )
        if stage.launches:
            # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
            p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    check = "validate params and print the resolved values"
    p = sub.add_parser("check", help=check, description=check)
    p.set_defaults(fn=cmd_check, address_floor_mib=None)
    _add_params(p)
    p = sub.add_parser("env", help="versions, extension ops, GPU and its peak figures")
    p.set_defaults(fn=cmd_env, address_floor_mib=TORCH_FLOOR_MIB)
    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from frontier/pipeline.py (and params' model.init_from)")
    p.set_defaults(fn=cmd_dvc_yaml, address_floor_mib=None)
    _add_params(p)
    p.add_argument("--path", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="fail if the file differs instead of writing it")
    from frontier import exp_view  # stdlib only: DVC runs in a subprocess

    p = sub.add_parser("exp", help=exp_view.HELP, description=exp_view.HELP, epilog=exp_view.LEGEND)
    p.set_defaults(fn=exp_view.command, address_floor_mib=None)
    exp_view.add_arguments(p)
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
    _call("frontier.quiet:install")  # known harmless library warnings, before any stage imports them
    die_with_launcher()  # a rank of a stage that started its own ranks ends (checkpointing) with that stage
    try:
        return _run(ns)
    except Exception as exc:  # a bug, not a user's error: the traceback goes to stderr as usual
        report_rank_error(f"{exc.__class__.__name__}: {exc}", 1)  # and its last line to a launcher, if any
        raise


def _run(ns: argparse.Namespace) -> int:
    """Run the stage; an error a user can cause ends as one line on stderr (and to a launcher) and an exit code."""
    try:
        check_address_space(ns.command, ns.address_floor_mib)
        ns.fn(ns)
        _leave_ranks()
    except KeyboardInterrupt:
        sys.stderr.write(f"frontier {ns.command}: interrupted\n")
        return 130
    except Exception as exc:  # libraries raise plain Exception/RuntimeError for a full disk or failed allocation
        explained = _explain(exc, ns)
        if explained is None:
            raise
        message, code = explained
        sys.stderr.write(f"frontier {ns.command}: error: {message}\n")
        report_rank_error(message, code)
        return code
    return 0


def _leave_ranks() -> None:
    """A stage that joined a process group leaves it with the other ranks, not at the interpreter's exit."""
    dist = sys.modules.get("torch.distributed")  # imported by a stage that has ranks; never imported here
    if dist is not None and dist.is_available() and dist.is_initialized():
        from frontier.train.launch.distributed import leave_process_group

        leave_process_group()


def _explain(exc: BaseException, ns: argparse.Namespace) -> tuple[str, int] | None:
    """(one line, exit code) for an error a user can cause; None for a bug (its traceback is shown)."""
    if isinstance(exc, FrontierError):
        return str(exc), exc.exit_code
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        # A path the user gave is wrong; name it without a traceback.
        return f"{exc.strerror}: {exc.filename or ''}", 2
    chain = exception_chain(exc)
    disk = _disk_error(chain)
    if disk is not None:
        # A write failed for lack of room or a read-only mount: the atomic output left nothing half-written.
        code, filename = disk
        where = filename or _output(chain, ns)
        return f"{os.strerror(code)} while writing {where}; {_DISK_ERRORS[code]}", 2
    torch_write = next((e for e in chain if any(t in str(e) for t in _TORCH_WRITE_TEXTS)), None)
    if torch_write is not None:
        return _torch_write_failed(torch_write, _output(chain, ns)), 2
    if out_of_memory(exc) or (_address_space_limit() and any("temporarily unavailable" in str(e) for e in chain)):
        # (EAGAIN creating a thread under `ulimit -v`: its stack could not be mapped)
        return _out_of_memory_line(exc), 2
    return None


_DISK_ERRORS = {
    errno.ENOSPC: "free some space or point the output at another disk",
    errno.EDQUOT: "the disk quota is used up: free some space or point the output at another disk",
    errno.EROFS: "the file system is read-only: point the output at a writable directory",
}
# How libraries without an OSError say it: Rust's io::Error (tokenizers, safetensors) ends in
# "(os error 28)"; others only carry the C library's text.
_OS_ERROR_NUMBER = re.compile(r"\(os error (\d+)\)")
_DISK_TEXTS = {os.strerror(code): code for code in _DISK_ERRORS}
# torch.save to a path writes through a C++ stream that drops errno: these are all it says.
_TORCH_WRITE_TEXTS = ("PytorchStreamWriter failed", "iostream error", "inline_container.cc")


def _disk_error(chain: list[BaseException]) -> tuple[int, str | None] | None:
    """(errno, file name or None) of the first full-disk/quota/read-only failure in `chain`."""
    for e in chain:
        if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
            return e.errno, e.filename
        text = str(e)
        match = _OS_ERROR_NUMBER.search(text)
        if match and int(match.group(1)) in _DISK_ERRORS:
            return int(match.group(1)), None
        for words, code in _DISK_TEXTS.items():
            if words in text:
                return code, None
    return None


def _output(chain: list[BaseException], ns: argparse.Namespace) -> str:
    """The stage's output being written when `chain` was raised: its checkpoints while saving one, else --out."""
    checkpoints = getattr(ns, "checkpoints", None)
    for e in chain:
        tb = e.__traceback__
        while checkpoints and tb is not None:
            if Path(tb.tb_frame.f_code.co_filename).parts[-2:] == ("checkpoint", "checkpoint.py"):
                return checkpoints
            tb = tb.tb_next
    return getattr(ns, "out", None) or checkpoints or "the output"


def _torch_write_failed(exc: BaseException, where: str) -> str:
    """torch lost errno; the file system says which of the usual causes it was."""
    probe = Path(where).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        fs = os.statvfs(probe)
    except OSError:
        fs = None
    torch_said = f"torch: {first_line(exc, 100)}"
    if fs is not None and fs.f_flag & os.ST_RDONLY:
        return f"{os.strerror(errno.EROFS)} while writing {where} ({torch_said}); {_DISK_ERRORS[errno.EROFS]}"
    free = None if fs is None else fs.f_bavail * fs.f_frsize
    if free is not None and free < 2**20:
        return f"{os.strerror(errno.ENOSPC)} while writing {where} ({torch_said}); {_DISK_ERRORS[errno.ENOSPC]}"
    return (
        f"could not write {where} ({torch_said}); the disk is probably full or over its quota "
        f"({'?' if free is None else f'{free / 2**20:.0f}'} MiB free now): free some space or point the output elsewhere"
    )


def _out_of_memory_line(exc: BaseException) -> str:
    detail = "" if isinstance(exc, MemoryError) and not str(exc) else f" ({first_line(exc, 160)})"
    limit = _address_space_limit()
    if limit:
        return (
            f"out of memory{detail} under the address-space limit RLIMIT_AS (ulimit -v) of {limit // 1024} KiB; "
            "raise or remove it (ulimit -v unlimited) or lower this stage's sizes in params.yaml"
        )
    return (
        f"out of memory{detail}; lower this stage's sizes in params.yaml (for example prepare.max_docs, "
        "prepare.clean.max_chars, train.micro_batch_size) or run it on a machine with more memory"
    )


def _address_space_limit() -> int | None:
    """The soft RLIMIT_AS in bytes, or None when there is none."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def check_address_space(command: str, floor_mib: int | None) -> None:
    """ResourceError when `ulimit -v` leaves `command` less than its `floor_mib` (its subparser's
    address_floor_mib; None: it starts no stage) of address space: too little for torch to start."""
    limit = _address_space_limit()
    if limit is None or floor_mib is None or limit >= floor_mib * 2**20:
        return
    raise ResourceError(
        f"the address-space limit RLIMIT_AS (ulimit -v) is {limit // 1024} KiB; frontier {command} needs at "
        f"least {floor_mib * 1024} KiB ({floor_mib} MiB) for torch"
        f"{' and DeepSpeed' if floor_mib >= DEEPSPEED_FLOOR_MIB else ''} "
        "to start: raise it (ulimit -v unlimited, or the job's virtual-memory limit)"
    )


if __name__ == "__main__":
    sys.exit(main())
