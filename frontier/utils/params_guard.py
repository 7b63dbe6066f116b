"""Parameter files are data: refuse YTE templates before Snakemake evaluates them.

Snakemake reads every ``--configfile`` (and profile) through YTE, which evaluates ``?expr`` values and
``__definitions__`` blocks as Python when the document holds ``__use_yte__: true`` — while parsing its
command line, before any workflow code (ours included) runs, under ``snakemake -n`` too. Snakemake has no
switch for it, so Frontier's environment carries a guard: ``frontier-params-guard.pth`` in the venv's
site-packages (written by :func:`install`, which run.sh calls after each install) makes the
interpreter wrap ``yte.process_yaml`` the moment yte is imported (YteFinder). A document asking for templating is
refused with one line naming the file; any other document goes through untouched, and the wrapper hands
yte a code handler that refuses to evaluate anything, so no other way into eval/exec stays open.

The Snakefile reads params.yaml with Frontier's strict loader (no ``configfile:`` directive), so that
file never reaches YTE at all; this guard covers the files named on Snakemake's command line.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import io
import sysconfig
from pathlib import Path
from typing import Any

PTH_NAME = "frontier-params-guard.pth"
# The .pth's one line (site.py runs lines that start with "import"): a finder that loads the guard only when
# yte itself is imported, so a process that never loads yte (a model loaded by stock transformers, a
# stage) never imports frontier because of it.
PTH_LINE = (
    'import sys; exec("class _FrontierYteHook:\\n def find_spec(self, name, path=None, target=None):\\n'
    "  if name != 'yte': return None\\n  from frontier.utils.params_guard import YteFinder\\n"
    '  return YteFinder().find_spec(name, path, target)\\nsys.meta_path.insert(0, _FrontierYteHook())")\n'
)
REFUSAL = "a YTE template ('__use_yte__'); parameter files are data here, write the values out"


class TemplateRefused(Exception):
    """Raised (as Snakemake's WorkflowError where Snakemake is loaded) for a templated document."""


def _error(message: str) -> Exception:
    """Snakemake prints its WorkflowError as one line; elsewhere a plain exception of ours."""
    try:
        from snakemake_interface_common.exceptions import WorkflowError
    except ImportError:
        return TemplateRefused(message)
    return WorkflowError(message)


class _RefusingCodeHandler:
    """yte's code-handler interface (eval / exec) with nothing evaluated."""

    def eval(self, expr: str, variables: dict[str, Any]) -> Any:
        raise _error(f"refused to evaluate {expr[:60]!r}: {REFUSAL}")

    def exec(self, source: str, variables: dict[str, Any]) -> Any:
        raise _error(f"refused to run {source[:60]!r}: {REFUSAL}")


def _guarded(original: Any) -> Any:
    def process_yaml(file: Any, *args: Any, **kwargs: Any) -> Any:
        from frontier.utils.strict_yaml import YamlRefused, load_plain

        text = file if isinstance(file, str) else file.read()
        name = getattr(file, "name", "a YAML document")
        try:  # Frontier's strict loader: safe tags only, no duplicate keys, no alias bombs
            doc = load_plain(text)
        except YamlRefused as exc:
            raise _error(f"{name}: {exc.key}: {exc.message}") from None
        if isinstance(doc, dict) and "__use_yte__" in doc:
            raise _error(f"{name}: {REFUSAL}")
        if kwargs.get("require_use_yte"):
            return doc  # what yte returns for a document that asks for no templating, without a second parse
        # A caller templating unconditionally (a rule's yte template): yte runs, evaluating nothing.
        kwargs["code_handler"] = _RefusingCodeHandler()
        return original(text if isinstance(file, str) else io.StringIO(text), *args, **kwargs)

    process_yaml.__wrapped__ = original  # type: ignore[attr-defined]
    return process_yaml


def guard_module(module: Any) -> None:
    """Replace ``module.process_yaml`` (yte's entry point) by the refusing wrapper, once."""
    current = getattr(module, "process_yaml", None)
    if current is not None and not hasattr(current, "__wrapped__"):
        module.process_yaml = _guarded(current)


class YteFinder(importlib.abc.MetaPathFinder):
    """Guards yte right after its first import (no import cost for processes that never load it)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "yte":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            guard_module(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install(site_packages: str | Path | None = None) -> Path:
    """Write the .pth that arms the guard at every interpreter start of this environment."""
    directory = Path(site_packages or sysconfig.get_paths()["purelib"])
    path = directory / PTH_NAME
    if not path.is_file() or path.read_text(encoding="utf-8") != PTH_LINE:
        from frontier.utils.atomic import atomic_file

        with atomic_file(path) as f:  # never half a .pth (site.py would run what it holds), nor through a link
            f.write(PTH_LINE)
    return path
