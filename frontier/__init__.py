"""Frontier: a reproducible LLM training system.

Stages (prepare → tokenizer → tokenize → train → evaluate → report, + finetune) are importable
functions called by `frontier.cli`, driven by Snakemake and DVC, configured by params.yaml.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("frontier")  # one source: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
