"""Load YAML into a pydantic model; errors carry file, field path and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from fieldmon.config.errors import ConfigError, ConfigIssue

ModelT = TypeVar("ModelT", bound=BaseModel)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file, keeping node positions; syntax errors become ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, "", f"cannot read file: {exc.strerror}")]) from exc
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        problem = exc.problem or str(exc)
        raise ConfigError([ConfigIssue(path, "", f"YAML syntax: {problem}", line)]) from exc
    except YAMLError as exc:
        raise ConfigError([ConfigIssue(path, "", f"YAML syntax: {exc}")]) from exc


def _line_of(document: Any, location: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest node on `location` that the YAML parser recorded."""
    node, line = document, None
    for key in location:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            break
    return line


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _clean_location(location: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop pydantic's internal steps (union members, validator names) from an error location."""
    return tuple(
        part
        for part in location
        if isinstance(part, int) or not (str(part).startswith("function-") or "[" in str(part))
    )


def issues_from_validation(path: Path, document: Any, error: ValidationError) -> list[ConfigIssue]:
    """One ConfigIssue per pydantic error, with the YAML line where known."""
    issues = []
    for item in error.errors(include_url=False, include_input=False):
        location = _clean_location(tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; allowed keys are in the docs)"
        elif item["type"] == "missing":
            message = "required key is missing"
        issues.append(
            ConfigIssue(path, _field_path(location), message, _line_of(document, location))
        )
    return issues


def load_model(path: Path | str, model: type[ModelT]) -> ModelT:
    """Load and validate one config file; raise ConfigError naming every problem."""
    path = Path(path)
    document = load_yaml(path)
    if document is None:
        raise ConfigError([ConfigIssue(path, "", "file is empty")])
    if not isinstance(document, dict):
        raise ConfigError([ConfigIssue(path, "", "top level must be a mapping of keys", 1)])
    try:
        return model.model_validate(document, context={"config_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(issues_from_validation(path, document, exc)) from exc
