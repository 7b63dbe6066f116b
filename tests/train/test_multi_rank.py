"""Two CPU ranks (gloo, launched as separate processes like a launcher would) match one rank.

Same global batch of padded, variable-length windows (4 sequences per step); the 2-rank runs
split it as 2 ranks x micro 1 x accumulation 2 (ZeRO-2) and 2 ranks x micro 2 (ZeRO-3, with the
fused linear + cross-entropy loss), so the token count differs between the ranks' shares and the
normalisation has to be global.
"""

from __future__ import annotations

import json

import pytest

from tests.train.helpers import BASE, assert_same_run, launch, log_tail, tiny_params, wait_all


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        ("engine.zero_stage=2", "train.micro_batch_size=1", "train.grad_accum_steps=2"),
        # + the fused linear/cross-entropy, which reads the (partitioned) head weight outside its module
        (
            "engine.zero_stage=3",
            "train.micro_batch_size=2",
            "train.grad_accum_steps=1",
            "kernels.fused_linear_cross_entropy=true",
        ),
    ],
    ids=["zero2-micro1-accum2", "zero3-micro2-fused-loss"],
)
def test_two_ranks_match_one_rank(tmp_path, corpus, one_rank, layout):
    out = tmp_path / "out"
    # a user DeepSpeed JSON: no parameter stays whole under ZeRO-3 (tiny ones would by default)
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    layout = (*layout, f"engine.deepspeed_config={ds_json}")
    procs = launch(2, tiny_params(*BASE, *layout), corpus, out, tmp_path / "ckpt")
    codes = wait_all(procs)
    assert codes == [0, 0], log_tail(out, 0) + log_tail(out, 1)
    assert_same_run(one_rank, out)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["slurm", "openmpi"])
def test_ranks_started_by_srun_or_mpirun_find_each_other(tmp_path, corpus, one_rank, scheme):
    # Only what srun / mpirun put in the environment: the rendezvous address and port are derived.
    out = tmp_path / "out"
    layout = ("engine.zero_stage=2", "train.micro_batch_size=1", "train.grad_accum_steps=2")
    procs = launch(2, tiny_params(*BASE, *layout), corpus, out, tmp_path / "ckpt", scheme=scheme)
    codes = wait_all(procs)
    assert codes == [0, 0], log_tail(out, 0) + log_tail(out, 1)
    assert_same_run(one_rank, out)
