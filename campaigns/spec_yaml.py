"""Spec text to data: YAML composed node by node so every field path keeps its line, or JSON;
bounded in nodes and nesting before any parser recurses."""

from __future__ import annotations

from typing import Any

import yaml

from campaigns.spec_check import CampaignSpecError, FieldError, field_path
from core.json_strict import DuplicateKeyError, json_loads_strict

MAX_YAML_NODES = 50_000  # guards against alias bombs that expand a small text into millions


class _Composer:
    """Turns composed YAML nodes into plain data, remembering each path's line."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.lines: dict[str, int] = {}
        self.nodes = 0

    def build(self, node: yaml.Node, path: str) -> Any:
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise CampaignSpecError([FieldError("", "too many YAML nodes (alias expansion?)")])
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out: dict = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                if not isinstance(key, str):
                    raise CampaignSpecError(
                        [
                            FieldError(
                                path, f"keys must be strings, got {key!r}", self._line(key_node)
                            )
                        ]
                    )
                sub = field_path(path, key)
                if key in out:
                    raise CampaignSpecError(
                        [FieldError(sub, "duplicate key", self._line(key_node))]
                    )
                out[key] = self.build(value_node, sub)
                self.lines.setdefault(sub, self._line(key_node))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, field_path(path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: str) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError as exc:
            # int() past Python's 4300-digit limit, a date like 2026-13-45: a value, not a crash
            raise CampaignSpecError(
                [FieldError(path, f"cannot be read: {exc}", self._line(node))]
            ) from None

    @staticmethod
    def _line(node: yaml.Node) -> int:
        return node.start_mark.line + 1


MAX_DEPTH = 32


def depth_check(text: str) -> None:
    """Refuse nesting no campaign needs before a parser recurses into it."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    indent = max((len(line) - len(line.lstrip(" -")) for line in text.splitlines()), default=0)
    if deepest > MAX_DEPTH or indent > MAX_DEPTH * 8:
        raise CampaignSpecError([FieldError("", f"nested deeper than {MAX_DEPTH} levels")])


def spec_load(text: str) -> tuple[Any, dict[str, int]]:
    depth_check(text)
    stripped = text.lstrip()
    if stripped.startswith("{") and stripped.rstrip().endswith("}"):
        try:
            return json_loads_strict(text), {}
        except DuplicateKeyError as exc:
            # json.loads kept the last value silently; the YAML reading refuses it too.
            raise CampaignSpecError([FieldError(exc.path, "duplicate key")]) from None
        except ValueError:
            pass  # YAML flow mappings look alike; let the YAML parser judge
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, {}
        composer = _Composer(loader)
        return composer.build(node, ""), composer.lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "cannot be parsed"
        raise CampaignSpecError([FieldError("", f"invalid YAML: {problem}", line)]) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise CampaignSpecError([FieldError("", f"invalid YAML: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
