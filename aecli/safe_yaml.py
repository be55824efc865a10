"""YAML as a config language should be read: bounded, unambiguous, strict about numbers.

PyYAML's SafeLoader is safe from code execution but not from surprises: YAML 1.1 reads
`10:00` as 600, `0x10` as 16, lets a repeated key silently win, and expands nested aliases
into exponentially large documents (an "alias bomb"). This loader keeps YAML 1.2's plain
decimal numbers and true/false only, refuses duplicate keys, and measures a document's
expanded size before anything walks it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from aecli.errors import ConfigError, clip, shorten

MAX_DOCUMENT_BYTES = 1 << 20  # a config is a few hundred bytes; anything this big is a mistake
MAX_EXPANDED_NODES = 100_000  # nodes after alias expansion; a billion-laughs document has ~10^9


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars, duplicate-key errors and an expansion limit."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # `!!set [a]`: not a mapping; the base class says so
            return super().construct_mapping(node, deep=deep)
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; construct_mapping reports it
                continue
            if first is not None:
                raise ConfigError(
                    f"duplicate key {shorten(key)} (line {first.start_mark.line + 1} and line "
                    f"{key_node.start_mark.line + 1}); keep one"
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _core_schema_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    """SafeLoader's implicit resolvers with its YAML 1.1 bool/int/float rules replaced by YAML 1.2 core ones."""
    replaced = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    resolvers = {
        first: [(tag, pattern) for tag, pattern in entries if tag not in replaced]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    core = [
        ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
        ("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), "-+0123456789"),
        (
            "tag:yaml.org,2002:float",
            re.compile(
                r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
            ),
            "-+0123456789.",
        ),
    ]
    for tag, pattern, first_chars in core:
        for char in first_chars:
            resolvers.setdefault(char, []).append((tag, pattern))
    return resolvers


CORE_RESOLVERS = _core_schema_resolvers()
_StrictLoader.yaml_implicit_resolvers = CORE_RESOLVERS


def _construct_core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    return int(loader.construct_scalar(node))


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_core_int)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes the document has once every alias is expanded, without expanding it:
    each distinct node's size is computed once, so a bomb is measured in microseconds."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise ConfigError(f"an alias refers to its own anchor (line {node.start_mark.line + 1}): a cycle")
        on_path.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_NODES:
                raise ConfigError(
                    f"the document expands to more than {MAX_EXPANDED_NODES:,} values (nested aliases, "
                    f"line {node.start_mark.line + 1}); a config needs a few dozen"
                )
        on_path.discard(key)
        sizes[key] = total
        return total

    size(root)


def load_yaml(text: str, where: str) -> Any:
    """Parse one YAML document; every failure is a ConfigError that names `where` and the line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_DOCUMENT_BYTES // 1024} KiB; a config is a short YAML file")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML in {where}{at}: {clip(problem)}") from None
    except ConfigError as exc:  # a duplicate key, a cycle or a bomb, found while composing
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
    except (ValueError, KeyError, AttributeError, IndexError, TypeError, OverflowError) as exc:
        # PyYAML's constructors fail this way on explicit tags they cannot apply (`!!bool mse`,
        # `!!timestamp x`, `!!float` of nothing) or on a scalar that matched a resolver but
        # does not convert
        reason = clip(str(exc) or type(exc).__name__)
        raise ConfigError(
            f"invalid YAML in {where}: a value cannot be read as its tag or type says ({reason})"
        ) from None
