"""Reading ``nightproxy.yaml`` from disk: text, YAML, then validation.

PyYAML's ``safe_load`` silently accepts three things no reader of the result could want: a key
given twice in one mapping (the last would win), a value that contains itself (which no reader
could walk to its end), and aliases that expand to more than memory holds (a "billion laughs").
All are refused here, at their key path, before construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml

from nightproxy.config.errors import FILE_KEY, ConfigError, index_path, key_path
from nightproxy.config.records import Config
from nightproxy.config.validate import config_from_mapping

__all__ = ["load_config"]

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
#: The most values a file may hold with its aliases expanded. A large real configuration
#: (thousands of projects, hundreds of publishers) holds tens of thousands.
MAX_VALUES: Final = 100_000


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the configuration file at ``path``."""
    file = path.expanduser().absolute()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(file, FILE_KEY, "file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(file, FILE_KEY, "not valid UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(file, FILE_KEY, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        data = _parse_yaml(text, file)
    # `from None` also keeps PyYAML's own message, which quotes the line, out of tracebacks.
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(file, FILE_KEY, _yaml_message(exc)) from None
    except yaml.YAMLError:
        raise ConfigError(file, FILE_KEY, "invalid YAML") from None
    except RecursionError:
        # PyYAML's composer recurses once per level of nesting.
        raise ConfigError(file, FILE_KEY, "nested too deeply") from None
    try:
        return config_from_mapping(data, file, environ)
    except RecursionError:
        raise ConfigError(file, FILE_KEY, "nested too deeply") from None


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    # Built from the parts rather than str(exc), which quotes the offending line, and that
    # line may hold a password.
    mark = exc.problem_mark or exc.context_mark
    where = f" at {_where(mark)}" if mark is not None else ""
    return f"invalid YAML{where}: {exc.problem or exc.context or 'syntax error'}"


def _where(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _parse_yaml(text: str, file: Path) -> object:
    """``yaml.safe_load``, after :func:`_check_keys` has walked the document's nodes."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_keys(loader, root, file)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _check_keys(loader: yaml.SafeLoader, root: yaml.Node, file: Path) -> None:
    # Each node is walked once, however many aliases point at it; a node met again while its
    # own children are being walked is a loop. On the way out, each node's size once every
    # alias in it is expanded is added up from its children's, so a "billion laughs" is caught
    # after visiting its few dozen nodes, before anything is constructed.
    done: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str, list[yaml.Node] | None]] = [(root, "", None)]
    while stack:
        node, path, leaving_children = stack.pop()
        if leaving_children is not None:
            open_nodes.discard(id(node))
            size = 1 + sum(done[id(child)] for child in leaving_children)
            if size > MAX_VALUES:
                raise ConfigError(
                    file,
                    path or FILE_KEY,
                    f"holds more than {MAX_VALUES} values once its aliases are expanded; "
                    "a configuration needs far fewer",
                )
            done[id(node)] = size
            continue
        if id(node) in open_nodes:
            raise ConfigError(
                file, path or FILE_KEY, "this alias refers to a value that contains it"
            )
        if id(node) in done:
            continue
        open_nodes.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.SequenceNode):
            children = [(child, index_path(path, i)) for i, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            children = _mapping_children(loader, node, path, file)
        stack.append((node, path, [child for child, _ in children]))
        stack.extend((child, child_path, None) for child, child_path in reversed(children))


def _mapping_children(
    loader: yaml.SafeLoader, node: yaml.MappingNode, path: str, file: Path
) -> list[tuple[yaml.Node, str]]:
    children: list[tuple[yaml.Node, str]] = []
    # By type too: `1:` and `true:` are equal in Python, not in YAML.
    seen: dict[tuple[type, object], yaml.Mark] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            # `<<: *defaults` brings keys the mapping may override; those are not duplicates.
            children.append((value_node, path))
            continue
        key: object = "?"
        if isinstance(key_node, yaml.ScalarNode):
            key = loader.construct_object(key_node)
            identity = (type(key), key)
            mark = key_node.start_mark
            if identity in seen:
                first, again = _where(seen[identity]), _where(mark)
                raise ConfigError(
                    file, key_path(path, key), f"duplicate key (at {first} and again at {again})"
                )
            seen[identity] = mark
        children.append((value_node, key_path(path, key)))
    return children
