"""engine.compile in the train stage: the eager loss curve, the eager names, and resumes across the switch.

Each compiled run pays Inductor's compile time (tens of seconds on the CPU), so the runs are few and
short, and the ZeRO-0 pair also serves the resume tests (checkpoints at steps 3 and 6).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from frontier.train.checkpoint.engine_io import weights_only_loads
from frontier.train.checkpoint.manifest import read_manifest
from frontier.train.checkpoint.reshard import DS_DIR, DS_TAG
from frontier.train.run import train
from tests.train.helpers import losses, params, weights

RUN = ("train.max_steps=6", "train.checkpoint.every_steps=3", "train.checkpoint.keep_best=false")
# fp32 on the CPU: Inductor's fused kernels round differently in the last bits. Measured over these 6
# steps: at most ~1e-7 relative in the loss (one fp32 ulp), ~1e-6 in a weight; the bounds are 10x that
# and still far below what one step changes (~1e-3 relative in the loss).
LOSS_RTOL = 1e-6
WEIGHT_ATOL = 1e-5


def _run(root: Path, corpus, *overrides: str) -> Path:
    train(params(*RUN, *overrides), corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    return root


@pytest.fixture(scope="module")
def eager(tmp_path_factory, corpus) -> Path:
    return _run(tmp_path_factory.mktemp("eager"), corpus)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, corpus) -> Path:
    torch._dynamo.reset()
    return _run(tmp_path_factory.mktemp("compiled"), corpus, "engine.compile=true")


def _assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses(a / "out"), losses(b / "out")
    assert len(la) == len(lb) == 6
    torch.testing.assert_close(lb, la, rtol=LOSS_RTOL, atol=0)
    wa, wb = weights(a / "out"), weights(b / "out")
    assert list(wa) == list(wb)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=WEIGHT_ATOL, msg=key)


def _checkpoint_keys(ckpt: Path, step: int) -> tuple[list[str], list[str]]:
    """(files listed in the manifest, module state_dict keys DeepSpeed saved) of step `step`."""
    directory = ckpt / f"step_{step:08d}"
    with weights_only_loads():
        state = torch.load(directory / DS_DIR / DS_TAG / "mp_rank_00_model_states.pt", weights_only=True)
    return sorted(read_manifest(directory)["files"]), list(state["module"])


def test_compiled_run_follows_the_eager_loss_curve(eager, compiled) -> None:
    _assert_same_run(eager, compiled)


def test_exported_model_and_checkpoints_keep_the_eager_names(eager, compiled) -> None:
    assert list(weights(compiled / "out")) == list(weights(eager / "out"))
    for step in (3, 6):
        files, keys = _checkpoint_keys(compiled / "ckpt", step)
        assert (files, keys) == _checkpoint_keys(eager / "ckpt", step)
        assert keys and not any("_orig_mod" in k for k in keys)


@pytest.mark.parametrize("first, then", [("eager", "compiled"), ("compiled", "eager")])
def test_resume_switches_compile(request, tmp_path, corpus, caplog, first: str, then: str) -> None:
    """compile is operational: a run checkpointed at step 3 one way resumes the other way, the same run."""
    source = request.getfixturevalue(first)
    shutil.copytree(source / "ckpt", tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "step_00000006")
    torch._dynamo.reset()
    with caplog.at_level(logging.INFO, logger="frontier"):
        _run(tmp_path, corpus, f"engine.compile={'true' if then == 'compiled' else 'false'}")
    assert any("resumed from" in r.getMessage() and "step 3" in r.getMessage() for r in caplog.records)
    assert losses(tmp_path / "out")[:3] == losses(source / "out")[:3]  # steps 1-3: the checkpoint's history
    _assert_same_run(source, tmp_path)


def test_zero2_compiled_run_follows_eager(tmp_path, corpus) -> None:
    torch._dynamo.reset()
    zero2 = ("engine.zero_stage=2",)
    _assert_same_run(_run(tmp_path / "eager", corpus, *zero2), _run(tmp_path / "compiled", corpus, *zero2,
                                                                   "engine.compile=true"))  # fmt: skip


def test_compile_with_activation_checkpointing_follows_eager(tmp_path, corpus, eager) -> None:
    """Both memory and speed switches on (the graph breaks per layer there: frontier.model.compile)."""
    torch._dynamo.reset()
    _assert_same_run(eager, _run(tmp_path, corpus, "engine.compile=true", "engine.activation_checkpointing=true"))


def test_bad_compile_values_are_one_clear_error() -> None:
    from frontier.errors import ConfigError

    for bad in ("maybe", "2", "inductor"):
        with pytest.raises(ConfigError, match=rf"engine\.compile: got '?{bad}'?, expected true or false"):
            params(f"engine.compile={bad}")
