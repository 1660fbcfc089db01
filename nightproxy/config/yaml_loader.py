"""Reading ``nightproxy.yaml`` from disk: text, YAML, then validation.

PyYAML's ``safe_load`` silently accepts two things no reader of the result could want: a key
given twice in one mapping (the last would win) and a value that contains itself (which no
reader could walk to its end). Both are refused here, at their key path, before construction.
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
    # own children are being walked is a loop.
    done: set[int] = set()
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, leaving = stack.pop()
        if leaving:
            open_nodes.discard(id(node))
            done.add(id(node))
            continue
        if id(node) in open_nodes:
            raise ConfigError(
                file, path or FILE_KEY, "this alias refers to a value that contains it"
            )
        if id(node) in done:
            continue
        open_nodes.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.SequenceNode):
            for index, child in reversed(list(enumerate(node.value))):
                stack.append((child, index_path(path, index), False))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(reversed(_mapping_children(loader, node, path, file)))


def _mapping_children(
    loader: yaml.SafeLoader, node: yaml.MappingNode, path: str, file: Path
) -> list[tuple[yaml.Node, str, bool]]:
    children: list[tuple[yaml.Node, str, bool]] = []
    # By type too: `1:` and `true:` are equal in Python, not in YAML.
    seen: dict[tuple[type, object], yaml.Mark] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            # `<<: *defaults` brings keys the mapping may override; those are not duplicates.
            children.append((value_node, path, False))
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
        children.append((value_node, key_path(path, key), False))
    return children
