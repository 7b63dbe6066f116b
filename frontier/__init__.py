"""Frontier: a reproducible LLM training system.

Stages (prepare → tokenizer → tokenize → train → evaluate → report, + finetune) are importable
functions called by `frontier.cli`, driven by Snakemake and DVC, configured by params.yaml.
"""

__version__ = "0.1.0"
