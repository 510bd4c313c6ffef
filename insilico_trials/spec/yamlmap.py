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


def _scalar(node: yaml.Node) -> Any:
    # A fresh constructor per scalar: SafeConstructor keeps per-document state.
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise YamlLoadError(
                    file,
                    key_node.start_mark.line + 1,
                    f"{'.'.join(map(str, (*path, key)))}: duplicate key (a key may appear once)",
                )
            # The key's own line: errors about an unexpected key or a bad value point here.
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, (*path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), lines, file) for i, item in enumerate(node.value)]
    return _scalar(node)


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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlLoadError(file, line, f"not valid YAML: {exc.problem or exc}") from None
    lines: dict[Path_, int] = {}
    if node is None:
        return None, LineMap({(): 1})
    return _walk(node, (), lines, file), LineMap(lines)
