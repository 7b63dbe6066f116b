"""Export: the train stage's model/ loads in a fresh process with transformers alone, and its
weights are the trained ones (the final checkpoint's), so the logits match."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from tests.eval.tiny import corpus_texts, trained_run

_FRESH = """
import json, sys
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, text, out = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
ids = tok(text, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(input_ids=ids).logits[0].numpy()
np.savez(out, ids=ids[0].numpy(), logits=logits)
print(json.dumps({"frontier_imported": any(m.split(".")[0] == "frontier" for m in sys.modules),
                  "model_class": type(model).__name__, "tokenizer_class": type(tok).__name__}))
"""


def _checkpoint_model(run: dict) -> torch.nn.Module:
    """The trained weights as the final DeepSpeed checkpoint holds them, in a model built from config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from frontier.train.checkpoint.engine_io import weights_only_loads

    final = sorted(p for p in run["ckpt"].iterdir() if p.name.startswith("step_"))[-1]
    with weights_only_loads():
        states = torch.load(
            final / "ds" / "state" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True
        )
    weights = {k.removeprefix("lm."): v for k, v in states["module"].items()}
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run["out"] / "model"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # the head is tied to the embedding
    return model.eval()


def test_model_dir_is_hugging_face_layout():
    model_dir = trained_run()["out"] / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # no pickles leave the run
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "llama"


def test_fresh_process_without_frontier_reproduces_the_trained_logits(tmp_path):
    run = trained_run()
    text = corpus_texts(40)[-1][:200]
    out = tmp_path / "fresh.npz"
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, str(run["out"] / "model"), text, str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "frontier_imported": False,
        "model_class": "LlamaForCausalLM",
        "tokenizer_class": report["tokenizer_class"],
    }
    fresh = np.load(out)

    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(run["tokenizer"])(text)["input_ids"]
    assert fresh["ids"].tolist() == ids  # the tokenizer travelled with the weights
    with torch.no_grad():
        expected = _checkpoint_model(run)(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(fresh["logits"] - expected).max() < 1e-5
