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


def _record_forwards(model) -> tuple[list, object]:
    """Every forward's (batch, last-position logits, cache), appended by a hook; the hook's handle."""
    seen: list[tuple[int, torch.Tensor, object]] = []

    def hook(module, args, kwargs, out):
        seen.append((kwargs["input_ids"].shape[0], out.logits[:, -1, :].clone(), out.cache))

    return seen, model.register_forward_hook(hook, with_kwargs=True)


def _sample_reference(model, prompts: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """What generate did before the shared prompt and the reserved cache: every row runs the prompt, and the
    model's own DynamicCache grows by concatenation."""
    gen = torch.Generator().manual_seed(seed)
    cache, step_input, new = None, prompts, []
    with torch.inference_mode():
        for _ in range(steps):
            out = model(input_ids=step_input, use_cache=True, cache=cache)
            cache = out.cache
            new.append(sample_next(out.logits[:, -1, :], 1.0, 0, 0.9, gen))
            step_input = new[-1][:, None]
    return torch.stack(new, dim=1)


@pytest.mark.parametrize("rows", ["identical", "distinct"])
def test_a_shared_prompt_and_the_reserved_cache_compute_what_running_every_row_computes(rows):
    """n samples of one prompt run it once (batch 1) and share the cache, written in place: every step's logits
    are those of running the prompt in every row with a concatenating cache, bit for bit, so a seed draws the
    same tokens."""
    from frontier.eval.generate import _reserved_layer

    model = make_model(vocab_size=97, context=64, seed=8)
    if rows == "identical":
        prompts = torch.tensor([[5, 17, 42, 8, 9]]).expand(4, -1)
    else:
        prompts = torch.randint(3, 97, (3, 5), generator=torch.Generator().manual_seed(1))
    ours, handle = _record_forwards(model)
    try:
        tokens = generate(model, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9,
                          generator=torch.Generator().manual_seed(4))  # fmt: skip
    finally:
        handle.remove()
    theirs, handle = _record_forwards(model)
    try:
        assert torch.equal(tokens, _sample_reference(model, prompts, 12, seed=4))
    finally:
        handle.remove()
    assert [b for b, _, _ in ours] == [1 if rows == "identical" else 3] + [prompts.shape[0]] * 11
    for (_, mine, _), (_, ref, _) in zip(ours, theirs, strict=True):
        assert torch.equal(mine.expand_as(ref), ref)
    for layer in ours[-1][2].layers:  # written in place to the end, never concatenated
        assert type(layer) is _reserved_layer() and layer.keys.data_ptr() == layer.key_buffer.data_ptr()


def test_stop_strings_only_cut_the_texts_that_the_seed_draws():
    """The stop check reads each row's newest tokens: a row stops where its whole text first shows a stop
    string, and the draws are those of a run without stops, cut there."""
    tokenizer = make_tokenizer(corpus_texts(10), vocab_size=300)
    model = make_model(len(tokenizer), seed=5)
    kwargs = dict(n=6, max_new_tokens=40, temperature=1.0, top_k=0, top_p=1.0, seed=3)
    free = complete(model, tokenizer, "def f(x):", **kwargs)
    # A stop in every row, from the middle of its free text: three printable characters, most often spanning
    # two tokens or more (this random model draws single bytes mostly), so each row stops before its end.
    stop = []
    for text in free:
        at = next(i for i in range(len(text) // 3, len(text) - 3) if all(" " <= c <= "~" for c in text[i : i + 3]))
        stop.append(text[at : at + 3])
    forwards: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        cut = complete(model, tokenizer, "def f(x):", stop=stop, **kwargs)
    finally:
        hook.remove()
    assert cut == [truncate_at_stop(t, stop) for t in free]
    assert cut != free and len(forwards) < 40


def test_filters_that_are_off_return_the_logits_without_a_copy():
    logits = torch.randn(2, 9)
    assert filter_logits(logits) is logits
    filtered = filter_logits(logits, top_k=2, top_p=0.5)
    assert filtered is not logits and torch.isfinite(logits).all()  # the caller's tensor is never written
