"""finetune.method qlora for real on this CPU: bitsandbytes' 4-bit NF4 and 8-bit bases (its CPU backend), the
adapter trained through the same wiring, and merge folding it into the base it was trained on."""

from __future__ import annotations

import sys

import pytest
import torch

from frontier.errors import ConfigError
from frontier.finetune.adapter import load_base
from frontier.finetune.merge import merge
from frontier.finetune.quantize import QUANTIZATION_FILE, one_cpu_kernel, read_quantization
from frontier.finetune.run import finetune
from tests.finetune.helpers import SHORT, ft_params, heldout_loss
from tests.finetune.ranks import assert_same_losses, finetune_stage, zero3_every_weight
from tests.train.helpers import losses


def qlora(bits: str) -> tuple[str, ...]:
    return ("finetune.method=qlora", f"finetune.quantize={bits}")


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def tuned(request, tmp_path_factory, sft, base):
    """20 steps of QLoRA on the tiny base, every step logged."""
    bits = request.param
    root = tmp_path_factory.mktemp(f"qlora{bits}")
    params = ft_params(*qlora(bits), "finetune.max_steps=20", "finetune.log_every=1", "finetune.eval_every=0")
    metrics = finetune(params, base, sft, root / "out", root / "ckpt")
    return {"bits": bits, "root": root, "metrics": metrics}


def test_the_base_is_bitsandbytes_layers_computing_in_the_run_precision(base):
    """bf16 runs load the base in bf16: the quantized layers compute in it, the rest is held in it."""
    for bits, layer in (("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")):
        lm = load_base(base, bits, torch.device("cpu"), torch.bfloat16)
        q_proj = lm.model.layers[0].self_attn.q_proj
        assert type(q_proj).__name__ == layer
        assert q_proj.weight.dtype == (torch.uint8 if bits == "4bit" else torch.int8)
        if bits == "4bit":
            assert q_proj.compute_dtype == torch.bfloat16
        assert not any(p.requires_grad for p in lm.parameters())  # frozen until the adapter is attached
    plain = load_base(base, "none", torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}


def test_qlora_lowers_the_loss_and_exports_an_adapter(tuned):
    m, out = tuned["metrics"], tuned["root"] / "out"
    assert m["method"] == "qlora" and m["quantize"] == tuned["bits"]
    assert m["finetuned_heldout_loss"] < m["base_heldout_loss"]
    steps = losses(out)
    assert len(steps) == 20 and sum(steps[-5:]) < sum(steps[:5])  # the training loss falls over the 20 steps
    assert 0 < m["trainable_params"] < m["total_params"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    recorded = read_quantization(out / "adapter")
    assert recorded.load_in_4bit == (tuned["bits"] == "4bit") and recorded.load_in_8bit == (tuned["bits"] == "8bit")
    if tuned["bits"] == "4bit":
        assert recorded.bnb_4bit_quant_type == "nf4"


def test_merge_folds_the_adapter_into_the_dequantized_base(tuned, base, sft, tmp_path):
    """The adapter was trained on dequant(quant(W)): merged into that, the full-precision model computes what the
    stage trained and scored; merged into the original W it is off by the quantization error. 4-bit matmuls on the
    CPU run on the dequantized weights (the merge is exact to rounding); 8-bit ones also quantize the activations
    (no full-precision model matches them exactly; the dequantized base is still the closer one)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tuned["root"] / "out" / "adapter"
    merged = AutoModelForCausalLM.from_pretrained(merge(tuned["root"] / "out", tmp_path / "merged")).eval()
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    quantized = AutoModelForCausalLM.from_pretrained(
        base, quantization_config=read_quantization(adapter), device_map={"": "cpu"}, dtype=torch.float32
    )
    one_cpu_kernel(quantized)  # as load_base: the tiny layers are narrower than bitsandbytes' CPU repacking allows
    as_trained = PeftModel.from_pretrained(quantized, str(adapter)).eval()
    naive = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload()
    ids = torch.randint(3, 300, (4, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = as_trained(input_ids=ids).logits
        err = (merged(input_ids=ids).logits - want).abs()
        naive_err = (naive.eval()(input_ids=ids).logits - want).abs()
    if tuned["bits"] == "4bit":  # measured: 1e-6 vs 0.56
        assert err.max() < 1e-4 < 0.01 < naive_err.max()
        tokenizer = AutoTokenizer.from_pretrained(base)
        loss = heldout_loss(merged, tokenizer, sft / "heldout.jsonl")
        assert loss == pytest.approx(tuned["metrics"]["finetuned_heldout_loss"], rel=1e-5)
    else:  # measured: mean 0.0009 vs 0.0011, max 0.014 vs 0.025
        assert err.mean() < naive_err.mean() and err.max() < naive_err.max()


def test_quantize_outside_qlora_and_qlora_without_it_are_named():
    with pytest.raises(ConfigError, match=r"finetune\.quantize: '8bit' applies to method qlora only"):
        ft_params("finetune.quantize=8bit")
    with pytest.raises(ConfigError, match=r"finetune\.quantize: method qlora quantizes the base: expected quantize"):
        ft_params("finetune.method=qlora")


def test_without_bitsandbytes_qlora_is_a_clear_error(base, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an install without the package imports
    with pytest.raises(ConfigError, match=r"finetune\.quantize: '4bit' needs the bitsandbytes package"):
        load_base(base, "4bit", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="bitsandbytes runs on this machine's CUDA device")
def test_a_device_bitsandbytes_cannot_run_on_is_a_clear_error(base):
    """Capability, not device type: bitsandbytes is asked to run a layer where the base would live (here a CUDA
    device this torch has none of), and its own reason is passed on in one line."""
    with pytest.raises(ConfigError, match=r"'4bit': bitsandbytes \S+ cannot run its 4bit layers on cuda .*CUDA"):
        load_base(base, "4bit", torch.device("cuda"))


@pytest.mark.slow
def test_two_ranks_at_zero3_partition_the_quantized_base_and_match_one_rank(sft, base, tmp_path):
    """ZeRO-3 partitions the frozen 4-bit weights too (persistence threshold 0: every one), gathers their bytes
    back for each forward: 2 ranks x micro 4 give 1 rank x micro 8's per-step losses, hence no ZeRO refusal."""
    run = (*qlora("4bit"), *SHORT, *zero3_every_weight(tmp_path))
    finetune(ft_params(*run), base, sft, tmp_path / "one", tmp_path / "ckpt_one")
    finetune_stage(ft_params(*run, "finetune.micro_batch_size=4", "launch.nproc_per_node=2"), base, sft, tmp_path)
    assert_same_losses(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / "adapter" / QUANTIZATION_FILE).is_file()
