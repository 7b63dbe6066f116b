"""Named model sizes and the closed-form parameter count of both architectures.

``model.preset`` picks one of PRESETS; it sets the sizes (hidden, layers, heads, kv heads, MLP
width) and leaves arch, context, dropout and tying to the rest of ``model``. The count depends on
the vocabulary, so the table below is for a 32,000-token vocabulary, tied embeddings and a
2,048 context (`count_parameters` gives it for any other):

=======  ======  ======  =====  ========  =====  ============  ===========
preset   hidden  layers  heads  kv heads  MLP    llama params  gpt2 params
=======  ======  ======  =====  ========  =====  ============  ===========
tiny        64       2      4         4    192       2.15 M        2.28 M
small      256       4      4         4    704      11.41 M       11.88 M
125m       768      12     12        12   2048     109.53 M      111.20 M
350m      1024      24     16        16   2816     341.10 M      337.18 M
1b        2048      16     32         8   8192       1.04 B        0.88 B
=======  ======  ======  =====  ========  =====  ============  ===========

gpt2 uses a 4x GELU MLP and one kv head per head (no grouped-query attention) whatever the preset.
tests/model/test_presets.py checks this function against models actually built (on the meta device).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from frontier.config.model import ModelConfig
from frontier.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int  # the SwiGLU width (llama); gpt2 always uses 4 x hidden


PRESETS: dict[str, Preset] = {
    "tiny": Preset(64, 2, 4, 4, 192),
    "small": Preset(256, 4, 4, 4, 704),
    "125m": Preset(768, 12, 12, 12, 2048),
    "350m": Preset(1024, 24, 16, 16, 2816),
    "1b": Preset(2048, 16, 32, 8, 8192),
}


def swiglu_width(hidden_size: int, multiple: int = 64) -> int:
    """The Llama MLP width for `hidden_size`: 8/3 x hidden rounded up to `multiple` (~ the FLOPs of a 4x MLP)."""
    return -(-(8 * hidden_size) // (3 * multiple)) * multiple


def resolve(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with the preset's sizes filled in and every None size made explicit."""
    if cfg.preset is not None:
        preset = PRESETS.get(cfg.preset)
        if preset is None:
            raise ConfigError(f"model.preset: got {cfg.preset!r}, expected one of {', '.join(PRESETS)} or null")
        gpt2 = cfg.arch == "gpt2"  # no grouped-query attention, and a 4x GELU MLP
        cfg = dataclasses.replace(
            cfg,
            hidden_size=preset.hidden_size,
            num_layers=preset.num_layers,
            num_heads=preset.num_heads,
            num_kv_heads=preset.num_heads if gpt2 else preset.num_kv_heads,
            intermediate_size=4 * preset.hidden_size if gpt2 else preset.intermediate_size,
        )
    kv = cfg.num_kv_heads or cfg.num_heads
    if cfg.arch == "gpt2" and kv != cfg.num_heads:
        raise ConfigError(
            f"model.num_kv_heads: gpt2 has no grouped-query attention; got {kv} != num_heads {cfg.num_heads}"
        )
    if cfg.intermediate_size is not None:
        width = cfg.intermediate_size
    else:
        width = 4 * cfg.hidden_size if cfg.arch == "gpt2" else swiglu_width(cfg.hidden_size)
    return dataclasses.replace(cfg, num_kv_heads=kv, intermediate_size=width)


def count_parameters(cfg: ModelConfig, vocab_size: int) -> int:
    """Trainable parameters of the model `cfg` builds for `vocab_size` tokens (tied weights counted once)."""
    cfg = resolve(cfg)
    h, n_layers, inter = cfg.hidden_size, cfg.num_layers, cfg.intermediate_size
    assert cfg.num_kv_heads is not None and inter is not None
    head_dim = h // cfg.num_heads
    embed = vocab_size * h
    head = 0 if cfg.tie_embeddings else vocab_size * h
    if cfg.arch == "llama":
        attn = 2 * h * h + 2 * h * cfg.num_kv_heads * head_dim  # q, o + k, v (no biases)
        mlp = 3 * h * inter  # gate, up, down
        per_layer = attn + mlp + 2 * h  # two RMSNorm weights
        return embed + head + n_layers * per_layer + h  # + final norm
    # gpt2: Conv1D layers with biases, LayerNorm with weight and bias, learned positions
    attn = (h * 3 * h + 3 * h) + (h * h + h)
    mlp = (h * inter + inter) + (inter * h + h)
    per_layer = attn + mlp + 2 * 2 * h
    return embed + cfg.max_seq_len * h + head + n_layers * per_layer + 2 * h
