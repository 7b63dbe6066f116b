"""The vocabulary of a model continued from a local directory against the tokens it will read, both ways.

The token ids come from the tokenizer stage (the model's own tokenizer, copied unchanged) and never reach
``vocab_size``; the model looks each one up as a row of its input embeddings. Fewer rows than that cannot
train (an id would index past the table): one error naming the directory, both numbers and the fix. More
rows are legitimate: checkpoints round their tables up (Qwen2.5 has 151936 rows for 151665 tokens), and
those rows are simply never an input: one info line, and the model trains and exports with them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from frontier.errors import ConfigError

log = logging.getLogger("frontier.model")


def check_vocabulary(model_dir: Path | str, rows: int, vocab_size: int) -> None:
    """Refuse a model with fewer embedding rows than the `vocab_size`-token vocabulary; say so where it has more."""
    if rows < vocab_size:
        raise ConfigError(
            f"model.init_from: {model_dir} has {rows} embedding rows but the tokens use a {vocab_size}-token "
            f"vocabulary (made by another tokenizer); drop tokenizer.kind: pretrained and tokenizer.path so that "
            f"the tokenizer stage copies {model_dir}'s own tokenizer, then run the tokenizer and tokenize stages again"
        )
    if rows > vocab_size:
        log.info(
            "vocabulary: %s has %d embedding rows for a %d-token vocabulary; the %d rows above it are never an "
            "input (checkpoints round their tables up, as Qwen's) and stay in the model and its export",
            model_dir,
            rows,
            vocab_size,
            rows - vocab_size,
        )
