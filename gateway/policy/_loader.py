"""Reads a policy file: YAML -> validated :class:`PolicyDocument`, errors with file and line.

Every refusal reads ``FILE:LINE: PATH: reason`` (e.g.
``policies/prod.yaml:31: routes[2].fallback[0].version: unknown version '9' of model 'clip'``),
because an operator fixing a file at 3 a.m. needs the line, not a pydantic dump.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from prism.backends import PolicyError

from ._document import PolicyDocument
from ._references import check_references


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyLoadError(PolicyError):
    """A policy file was refused; ``issues`` lists every problem found, first one in ``detail``."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = list(issues)
        detail = str(self.issues[0])
        if len(self.issues) > 1:
            detail += f" (and {len(self.issues) - 1} more)"
        super().__init__(detail)


def _walk(node: yaml.Node | None, loc: Sequence[Any]) -> tuple[list[Any], int | None]:
    """Follow ``loc`` through the YAML node tree: (display path parts, line of deepest node).

    pydantic puts union tags (``local``, ``fake``, ``function-after[...]``) into ``loc``;
    they are not keys of the file, so they are dropped from the path shown to the operator.
    """
    parts: list[Any] = []
    line = node.start_mark.line + 1 if node is not None else None
    for i, key in enumerate(loc):
        if isinstance(key, str) and "[" in key:
            continue  # a type tag ("[key]", "str-enum[Task]", "list[...]"), not a file key
        last = i == len(loc) - 1
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(key):
                    child = v
                    line = k.start_mark.line + 1
                    key = str(key)  # a mapping key, even when YAML read it as a number
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is not None:
            parts.append(key)
            node = child
        elif last or isinstance(key, int):
            parts.append(key)  # a missing field: still part of the path
        # else: a union tag, skipped
    return parts, line


def _duplicate_keys(node: yaml.Node | None, parts: list[Any], file: str) -> list[PolicyIssue]:
    """YAML keeps the last of two equal keys silently; a policy must not (two models 'clip')."""
    issues: list[PolicyIssue] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value)
            line = k.start_mark.line + 1
            if key in first_line:
                issues.append(
                    PolicyIssue(
                        file,
                        line,
                        format_path([*parts, key]),
                        f"duplicate key {key!r} (first on line {first_line[key]})",
                    )
                )
            first_line.setdefault(key, line)
            issues += _duplicate_keys(v, [*parts, key], file)
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            issues += _duplicate_keys(child, [*parts, i], file)
    return issues


def format_path(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_not_found":
        disc = err.get("ctx", {}).get("discriminator", "").strip("'")
        return f"missing '{disc}'"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown {ctx.get('discriminator', '').strip(chr(39))} {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    msg = str(err["msg"])
    value = err.get("input")
    if kind == "string_type" and isinstance(value, int | float) and not isinstance(value, bool):
        return f'must be a string: quote it, "{value}" (YAML reads {value} as a number)'
    return msg.removeprefix("Value error, ")


def parse_policy(text: str, file: str = "<policy>") -> PolicyDocument:
    """Validate policy text; raises :class:`PolicyLoadError` naming file, line and path."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise PolicyLoadError([PolicyIssue(file, line, "", f"invalid YAML: {reason}")]) from exc
    if not isinstance(data, dict):
        raise PolicyLoadError([PolicyIssue(file, 1, "", "a policy must be a YAML mapping")])
    duplicates = _duplicate_keys(root, [], file)
    if duplicates:
        raise PolicyLoadError(duplicates)
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        issues: list[PolicyIssue] = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                # point at the discriminator key ('kind'), not at the union's own tag
                loc = (*loc, str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
            parts, line = _walk(root, loc)
            issue = PolicyIssue(file, line, format_path(parts), _message(dict(err)))
            # a union (``task: embed`` or a list) fails once per member: say it once
            if not any((i.line, i.path) == (issue.line, issue.path) for i in issues):
                issues.append(issue)
        raise PolicyLoadError(issues) from None
    problems = check_references(doc)
    if problems:
        issues = []
        for loc, message in problems:
            parts, line = _walk(root, loc)
            issues.append(PolicyIssue(file, line, format_path(parts), message))
        raise PolicyLoadError(issues)
    return doc


def issue_at(file: str, loc: Sequence[Any], message: str) -> PolicyIssue:
    """An issue found after validation (a version that cannot load), located in ``file``."""
    try:
        root = yaml.compose(Path(file).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        root = None
    parts, line = _walk(root, loc)
    return PolicyIssue(file, line, format_path(parts or list(loc)), message)


def load_policy_file(path: str | Path) -> PolicyDocument:
    """Read and validate a policy file (no side effects: safe for ``prism policy check``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyLoadError(
            [PolicyIssue(str(p), None, "", f"cannot read: {exc.strerror}")]
        ) from exc
    return parse_policy(text, str(p))
