"""A stage's log: the known, harmless library warnings filtered (frontier.quiet), every other one kept."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from frontier import quiet

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED_CPU = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
PEFT_ALIAS = "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing`"


@pytest.mark.parametrize("entry", quiet.KNOWN, ids=lambda e: e.source)
def test_each_entry_matches_what_its_library_says(entry: quiet.Known) -> None:
    """An entry whose library no longer says it is dead weight (remove it); the pattern must match the text."""
    spec = importlib.util.find_spec(entry.source)
    assert spec is not None and spec.origin, entry.source
    text = Path(spec.origin).read_text(encoding="utf-8")
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', text)  # the message's string literals, as written there
    assert any(re.match(entry.pattern, lit) for lit in literals), f"{entry.source} no longer says it:\n{quiet.table()}"
    assert entry.why and (entry.category is None) != (entry.logger is None)


@pytest.fixture
def installed(monkeypatch):
    """install() as a rank would run it, undone afterwards (warning filters and the loggers' filters)."""
    loggers = [logging.getLogger(e.logger) for e in quiet.KNOWN if e.logger]
    before = [list(lg.filters) for lg in loggers]

    def run(rank: int) -> list[warnings.WarningMessage]:
        monkeypatch.setattr(quiet, "_rank", lambda: rank)
        for lg, filters in zip(loggers, before):
            lg.filters = list(filters)
        quiet.install()
        return caught

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield run
    for lg, filters in zip(loggers, before):
        lg.filters = filters


def _said_by_deepspeed(message: str) -> bool:
    """Whether the DeepSpeed logger lets `message` through (its own handlers aside)."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("DeepSpeed")
    logger.addHandler(handler)
    try:
        logger.log(logging.WARNING + 1, message)  # above the level DeepSpeed sets; its handler's level drops it
    finally:
        logger.removeHandler(handler)
    return seen == [message]


def test_the_known_are_dropped_and_the_unknown_kept(installed) -> None:
    caught = installed(1)
    warnings.warn_explicit(PEFT_ALIAS, FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
    warnings.warn_explicit(
        "`foo` is deprecated", FutureWarning, "modeling_utils.py", 2, module="transformers.modeling_utils"
    )
    warnings.warn_explicit(PEFT_ALIAS, FutureWarning, "ours.py", 3, module="frontier.ours")  # ours: never hidden
    warnings.warn_explicit(PEFT_ALIAS, UserWarning, "modeling_utils.py", 4, module="transformers.modeling_utils")
    assert [(str(w.message), w.lineno) for w in caught] == [("`foo` is deprecated", 2), (PEFT_ALIAS, 3),
                                                             (PEFT_ALIAS, 4)]  # fmt: skip
    assert not _said_by_deepspeed(DEEPSPEED_CPU)  # rank 1: rank 0 says it for the run
    assert _said_by_deepspeed("Some other DeepSpeed warning")


def test_rank_0_says_the_run_facts_once(installed) -> None:
    installed(0)
    assert _said_by_deepspeed(DEEPSPEED_CPU)
    installed(None)  # the rank cannot be told: nothing rank-dependent is dropped
    assert _said_by_deepspeed(DEEPSPEED_CPU)


# A real stage: `frontier finetune` starting 2 ranks (DeepSpeed and peft in each), as a Snakemake rule runs it.
# Each process, right after the filters are installed, also says something unknown from the same libraries.
SITECUSTOMIZE = """
import logging, warnings
import frontier.quiet as quiet
_install = quiet.install

def install():
    _install()
    warnings.warn_explicit("an unknown FutureWarning", FutureWarning, "modeling_utils.py", 1,
                           module="transformers.modeling_utils")
    logging.getLogger("DeepSpeed").warning("an unknown DeepSpeed warning")

quiet.install = install
"""


@pytest.mark.slow
def test_a_stage_log_has_no_known_warning_and_keeps_the_unknown(tmp_path: Path) -> None:
    from frontier.config import dump_resolved, load_params
    from frontier.finetune.sft_data import build_sft_pairs
    from tests.eval.tiny import save_model_dir
    from tests.finetune.test_lora import FT_OVERRIDES
    from tests.finetune.test_sft_data import MODULES, prepared_dir

    overrides = [*FT_OVERRIDES, "finetune.max_steps=2", "finetune.eval_every=0", "finetune.log_every=1",
                 "launch.nproc_per_node=2", "launch.threads_per_rank=1"]  # fmt: skip
    params = load_params(None, overrides)
    build_sft_pairs(params, prepared_dir(tmp_path / "prepared", MODULES), tmp_path / "sft")
    model = save_model_dir(tmp_path / "base")
    params_file = dump_resolved(params, tmp_path / "p")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # Without DS_ACCELERATOR (tests/conftest.py sets it), DeepSpeed detects the device and says what it found.
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "DS_ACCELERATOR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(REPO)])
    cmd = [sys.executable, "-m", "frontier", "finetune", "--params", str(params_file), "--model", str(model),
           "--data", str(tmp_path / "sft"), "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    log = proc.stdout + proc.stderr  # what `2>&1 | tee {log}` keeps
    assert proc.returncode == 0, log[-4000:]
    assert "starting 2 rank(s)" in log and "finetune: held-out loss" in log, log[-4000:]
    assert "is_gradient_checkpointing" not in log and "warnings.warn(" not in log, log
    import torch

    expected = 0 if torch.cuda.is_available() else 1  # rank 0's, once for the run
    assert log.count("Setting accelerator to CPU") == expected, log
    assert log.count("FutureWarning: an unknown FutureWarning") == 3, log  # the stage's process and each rank
    assert log.count("an unknown DeepSpeed warning") >= 2, log  # each rank (the stage's process has no DeepSpeed)
