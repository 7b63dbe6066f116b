"""Strict YAML for parameter files: plain data only, refused early when hostile.

SafeLoader (no Python tags, so no code) plus what a parameter file must also be safe from: duplicate keys
(the second silently wins in PyYAML), alias bombs (billion laughs) and sizes far past any real settings.
Errors carry the line they are about; frontier.config turns them into one ConfigError naming the file.
"""

from __future__ import annotations

from typing import Any

import yaml


class YamlRefused(Exception):
    """A document refused by the strict loader: `key` says where (e.g. "line 4"), `message` why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


MAX_PARAMS_BYTES = 1 << 20  # a parameter file is a page of settings; 1 MiB is far past any real one
MAX_ALIASES = 100  # YAML aliases (*name) per document: enough for shared blocks, too few for a bomb
MAX_NODES = 100_000  # scalars + collections after alias expansion
MAX_INT_DIGITS = 100  # far past 2**64 (20 digits); Python itself stops converting at 4300


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values `node` stands for once every alias is expanded (a DAG walk: linear in the nodes)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts once
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = min(size, MAX_NODES + 1)  # saturate: 9**9 needs no exact count
    return memo[key]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and bounds aliases and size (no billion-laughs)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def load(self) -> Any:
        """The document's data, refused before construction when aliases would expand it too far."""
        node = self.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            mark = node.start_mark
            raise YamlRefused(f"line {mark.line + 1}", f"more than {MAX_NODES} values once aliases are expanded")
        return self.construct_document(node)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YamlRefused(
                    f"line {mark.line + 1}", f"more than {MAX_ALIASES} YAML aliases; write the values out"
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges a mapping in; explicit keys beside it override by design
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):  # a list or mapping as a key names no setting
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise YamlRefused(f"line {line}", f"a {kind} used as a key; keys are plain names")
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise YamlRefused(
                    f"line {line}", f"duplicate key {key!r} (first at line {seen[key]}); merge them into one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> Any:
        # Python refuses to convert integers of more than 4300 digits (a ValueError deep in the loader);
        # no setting needs more than a handful, so refuse long ones with the line.
        digits = len(str(node.value))
        if digits > MAX_INT_DIGITS:
            raise YamlRefused(
                f"line {node.start_mark.line + 1}",
                f"an integer written with {digits} characters; at most {MAX_INT_DIGITS}",
            )
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def strict_load(text: str) -> Any:
    """One YAML document as plain data: safe tags only, no duplicate keys, bounded aliases and size."""
    loader = _StrictLoader(text)
    try:
        return loader.load()
    finally:
        loader.dispose()


def load_plain(text: str) -> Any:
    """strict_load with every way a document fails as one YamlRefused (where, why), ready for one line."""
    try:
        return strict_load(text)
    except yaml.YAMLError as exc:  # a syntax error, or a tag (!!python/...) only an unsafe loader constructs
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        raise YamlRefused(where, f"not valid YAML: {getattr(exc, 'problem', None) or exc.__class__.__name__}") from None
    except RecursionError:
        raise YamlRefused("document", "nested too deeply to be a parameter file") from None
