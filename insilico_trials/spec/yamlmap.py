"""Load YAML and remember where each value came from.

Pydantic reports an error at a path such as ``("arms", 1, "regimen", "dose")``; the user needs
the line of the file. :func:`load_yaml_with_lines` returns the plain data and a map from every
path to the 1-based line of its value (and of its key, for mapping entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from insilico_trials.errors import InputError

__all__ = ["LineMap", "YamlLoadError", "load_yaml_with_lines"]

Path_ = tuple[str | int, ...]

# A protocol is a few hundred lines: these bounds stop a hostile or broken file (an alias
# bomb, a megabyte of nesting) long before it costs memory or time.
MAX_BYTES = 1 << 20
MAX_DEPTH = 40
MAX_NODES = 200_000
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map")
)


class YamlLoadError(InputError):
    """The file is not valid YAML, or has a duplicate key; ``line`` is 1-based."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


@dataclass(frozen=True)
class LineMap:
    """Line of the value (or key) at each path; unknown paths fall back to the nearest parent."""

    lines: dict[Path_, int]

    def line_of(self, path: Path_) -> int:
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def _scalar(node: yaml.Node, file: str) -> Any:
    # A fresh constructor per scalar: SafeConstructor keeps per-document state.
    try:
        value = yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except yaml.YAMLError as exc:  # e.g. a tag such as !!python/object: not plain data
        raise YamlLoadError(
            file, node.start_mark.line + 1, f"not plain YAML data ({node.tag}): {exc}"
        ) from None
    if not isinstance(value, str | int | float | bool | type(None)):
        raise YamlLoadError(
            file, node.start_mark.line + 1,
            f"{type(value).__name__} values ({node.tag}) are not part of a protocol; write "
            "numbers, text, true/false, lists and mappings",
        )  # fmt: skip
    return value


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str, seen: set[int]) -> Any:
    line = node.start_mark.line + 1
    if id(node) in seen:
        raise YamlLoadError(
            file, line, "YAML anchors and aliases (&name / *name) are not allowed in a protocol"
        )
    seen.add(id(node))
    if node.tag not in _PLAIN_TAGS:
        raise YamlLoadError(
            file, line, f"not plain YAML data (tag {node.tag}); a protocol is numbers, text, "
            "true/false, lists and mappings",
        )  # fmt: skip
    if len(path) > MAX_DEPTH:
        raise YamlLoadError(file, line, f"nested deeper than {MAX_DEPTH} levels")
    if len(seen) > MAX_NODES:
        raise YamlLoadError(file, line, f"more than {MAX_NODES} values; a protocol is far smaller")
    lines.setdefault(path, line)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlLoadError(
                    file, key_node.start_mark.line + 1,
                    f"{'.'.join(map(str, path)) or 'top level'}: a key must be a plain name or "
                    "number, not a list or mapping",
                )  # fmt: skip
            key = _scalar(key_node, file)
            if key in out:
                raise YamlLoadError(
                    file,
                    key_node.start_mark.line + 1,
                    f"{'.'.join(map(str, (*path, key)))}: duplicate key (a key may appear once)",
                )
            # The key's own line: errors about an unexpected key or a bad value point here.
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, (*path, key), lines, file, seen)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), lines, file, seen) for i, item in enumerate(node.value)]
    return _scalar(node, file)


def load_yaml_with_lines(path: str | Path, text: str | None = None) -> tuple[Any, LineMap]:
    """Parse a YAML file (safe loader) and return ``(data, LineMap)``.

    Raises
    ------
    YamlLoadError
        On a syntax error or a duplicate key, naming the file and line.
    """
    file = str(path)
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise YamlLoadError(
            file, 1, f"{len(text.encode('utf-8'))} bytes; a protocol is at most {MAX_BYTES}"
        )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlLoadError(file, line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlLoadError(file, 1, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlLoadError(file, 1, f"nested deeper than {MAX_DEPTH} levels") from None
    lines: dict[Path_, int] = {}
    if node is None:
        return None, LineMap({(): 1})
    return _walk(node, (), lines, file, set()), LineMap(lines)
