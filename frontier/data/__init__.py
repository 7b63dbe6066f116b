"""Data stages: sources, cleaning, dedup, splitting, tokenizer training, packing, loaders."""
