"""Generation: the top-k / top-p filters, sampling statistics, greedy against transformers' generate."""

from __future__ import annotations

import pytest
import torch

from frontier.eval.generate import complete, filter_logits, generate, sample_next, truncate_at_stop
from tests.eval.tiny import corpus_texts, make_model, make_tokenizer


def _kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert _kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert _kept(filter_logits(logits, top_k=0)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "top_p,kept", [(0.4, [0]), (0.75, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2, 3])]
)
def test_top_p_keeps_the_smallest_nucleus(top_p, kept):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    order = torch.tensor([2, 0, 3, 1])  # shuffled so the filter must sort
    logits = probs.log()[:, order]
    got = sorted(order[i].item() for i in _kept(filter_logits(logits, top_p=top_p)))
    assert got == kept


def test_filters_apply_per_row():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    out = filter_logits(logits, top_k=1)
    assert torch.isfinite(out).nonzero().tolist() == [[0, 2], [1, 0]]


def test_temperature_sampling_follows_the_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).expand(20000, -1)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, temperature=2.0, top_k=0, top_p=1.0, generator=gen)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    expected = torch.softmax(logits[0].double() / 2.0, dim=-1)
    # 5 standard errors of a binomial frequency at n = 20000
    tol = 5 * torch.sqrt(expected * (1 - expected) / draws.numel())
    assert torch.all((freq - expected).abs() < tol), (freq, expected)


def test_sampling_never_draws_filtered_tokens():
    logits = torch.randn(4000, 50, generator=torch.Generator().manual_seed(1))
    draws = sample_next(logits, temperature=1.5, top_k=3, top_p=1.0, generator=torch.Generator().manual_seed(2))
    top3 = torch.topk(logits, 3, dim=-1).indices
    assert bool((top3 == draws[:, None]).any(dim=-1).all())


def test_greedy_is_argmax():
    logits = torch.randn(8, 30)
    assert torch.equal(sample_next(logits, 0.0, 5, 0.5, None), logits.argmax(-1))


def test_greedy_generation_matches_transformers_generate():
    model = make_model(vocab_size=97, context=64, seed=3)
    prompt = torch.tensor([[5, 17, 42, 8]])
    ours = generate(model, prompt, max_new_tokens=12, temperature=0.0)
    theirs = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours[0], theirs[0, prompt.shape[1] :])


def test_generation_uses_the_current_cache_api(monkeypatch):
    """transformers 5.x renamed past_key_values to cache (the old name: a FutureWarning per forward, removed in
    5.40); generation passes the new one, to a peft-wrapped model too, and warns about nothing."""
    import logging
    import warnings

    from peft import LoraConfig, get_peft_model

    from frontier.eval.generate import cache_keyword

    said: list[str] = []
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, msg, *a, **k: said.append(str(msg)))
    model = make_model(vocab_size=97, context=64, seed=3)
    prompt = torch.tensor([[5, 17, 42, 8]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning or DeprecationWarning fails the call
        ours = generate(model, prompt, max_new_tokens=6)
    # (peft itself asks transformers' deprecated is_gradient_checkpointing here: frontier.quiet's table)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0)).eval()
    assert cache_keyword(peft_model) == "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(generate(peft_model, prompt, max_new_tokens=6), ours)  # LoRA B starts at zero
    assert not [m for m in said if "deprecated" in m], said


def test_a_model_with_the_old_cache_keyword_still_decodes_with_its_cache():
    """A model whose forward names past_key_values (a transformers release before the rename) gets that name:
    an unknown `cache` would vanish into its **kwargs and every token be decoded without the context."""
    from frontier.eval.generate import cache_keyword

    model = make_model(vocab_size=97, context=64, seed=3)

    class OldStyle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, input_ids, past_key_values=None, use_cache=None, **kwargs):
            out = self.inner(input_ids=input_ids, cache=past_key_values, use_cache=use_cache)
            return type("Out", (), {"logits": out.logits, "past_key_values": out.cache})()

    old = OldStyle()
    assert cache_keyword(old) == "past_key_values" and cache_keyword(model) == "cache"
    prompt = torch.tensor([[5, 17, 42, 8]])
    assert torch.equal(generate(old, prompt, max_new_tokens=8), generate(model, prompt, max_new_tokens=8))


def test_generation_respects_the_context():
    model = make_model(vocab_size=97, context=16, seed=4)
    prompt = torch.randint(3, 97, (3, 30), generator=torch.Generator().manual_seed(0))  # longer than the context
    out = generate(model, prompt, max_new_tokens=40, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 15)  # context - 1 new tokens


def test_rows_finish_at_eos_and_are_padded_with_it():
    model = make_model(vocab_size=97, context=64, seed=7)
    prompts = torch.tensor([[5, 6, 7], [40, 41, 42]])
    free = generate(model, prompts, max_new_tokens=10)
    eos = int(free[0, 2])  # row 0 produces this token third
    out = generate(model, prompts, max_new_tokens=10, eos_id=eos)
    assert torch.equal(out[0, :3], free[0, :3])
    assert bool((out[0, 3:] == eos).all())
    hits = (free[1] == eos).nonzero().flatten().tolist()
    end = hits[0] + 1 if hits else free.shape[1]
    assert torch.equal(out[1, :end], free[1, :end])  # the other row is unaffected until its own eos
    assert out.shape[1] == max(3, end)


def test_seeded_completions_repeat_and_differ_across_seeds():
    tokenizer = make_tokenizer(corpus_texts(10), vocab_size=300)
    model = make_model(len(tokenizer), seed=5)
    kwargs = dict(n=4, max_new_tokens=10, temperature=1.0, top_k=0, top_p=1.0)
    a = complete(model, tokenizer, "def f(x):", seed=11, **kwargs)
    b = complete(model, tokenizer, "def f(x):", seed=11, **kwargs)
    c = complete(model, tokenizer, "def f(x):", seed=12, **kwargs)
    assert a == b and len(a) == 4
    assert a != c


def test_truncate_at_stop_uses_the_earliest_stop():
    assert truncate_at_stop("    return 1\ndef g():\n#x", ["\n#", "\ndef "]) == "    return 1"
    assert truncate_at_stop("abc", []) == "abc"


def test_sampled_tokens_honour_the_nucleus_in_generation():
    """With top_p tiny, sampling at any temperature degenerates to greedy."""
    model = make_model(vocab_size=97, context=64, seed=6)
    prompt = torch.tensor([[3, 4, 5]])
    greedy = generate(model, prompt, max_new_tokens=8)
    nucleus = generate(
        model, prompt, max_new_tokens=8, temperature=5.0, top_p=1e-6, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(greedy, nucleus)
