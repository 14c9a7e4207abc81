"""Load YAML into a pydantic model; errors carry file, field path and line."""

from __future__ import annotations

import difflib
import re
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning, YAMLError
from ruamel.yaml.reader import ReaderError

from fieldmon.core.config.errors import ConfigError, ConfigIssue, FieldValueError
from fieldmon.core.config.secrets import SecretFileError

ModelT = TypeVar("ModelT", bound=BaseModel)
Location = tuple[int | str, ...]

# Longest value quoted back in a message; a pasted certificate should not flood the terminal.
_MAX_QUOTED = 60


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [ConfigIssue(path, "", "not a text file: it is not valid UTF-8", line)]
        ) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(path, "", f"cannot read file: {reason}")]) from exc


_DUPLICATE_KEY_RE = re.compile(r'found duplicate key "(.*)" with value')


def _syntax_message(exc: MarkedYAMLError) -> str:
    duplicate = _DUPLICATE_KEY_RE.search(exc.problem or "")
    if duplicate:
        return f"YAML syntax: key {duplicate.group(1)!r} appears twice in the same mapping"
    message = f"YAML syntax: {exc.problem or exc.context or 'cannot parse'}"
    if exc.context and exc.problem and exc.context_mark is not None:
        started = exc.context_mark.line + 1
        if exc.problem_mark is None or exc.problem_mark.line != exc.context_mark.line:
            message += f" ({exc.context}, which started on line {started})"
    if exc.problem and "'\\t'" in exc.problem:
        message += "; indent with spaces, not tabs"
    return message


def load_yaml(path: Path) -> Any:
    """Parse a YAML file, keeping node positions; syntax errors become ConfigError."""
    text = _read_text(path)
    yaml = YAML(typ="rt")
    try:
        with warnings.catch_warnings():
            # A redefined anchor is legal YAML; ruamel's warning would only clutter the output.
            warnings.simplefilter("ignore", ReusedAnchorWarning)
            return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(path, "", _syntax_message(exc), line)]) from exc
    except ReaderError as exc:
        line = text[: max(exc.position, 0)].count("\n") + 1
        code = (
            exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        )
        message = f"YAML syntax: control character U+{code:04X} is not allowed in a YAML file"
        raise ConfigError([ConfigIssue(path, "", message, line)]) from exc
    except YAMLError as exc:
        raise ConfigError([ConfigIssue(path, "", f"YAML syntax: {exc}")]) from exc
    except (ValueError, TypeError, LookupError, ArithmeticError, AttributeError) as exc:
        # ruamel's constructors raise these, without a position, for values such as
        # `2001-02-30`, `!!int x`, an empty `!!int` or `!!set`, `!!bool maybe`, a mapping as a key.
        message = f"YAML value cannot be read: {exc}"
        raise ConfigError([ConfigIssue(path, "", message)]) from exc
    except RecursionError as exc:
        message = "YAML syntax: nested too deeply to be a config file"
        raise ConfigError([ConfigIssue(path, "", message)]) from exc


@dataclass(frozen=True)
class Place:
    """Where a pydantic error location lands in the YAML document."""

    path: str  # the location as a user writes it: links[2].address
    line: int | None  # the deepest node on the location that the document has
    node: Any  # that node's value (the parent mapping for a missing key)
    found: bool  # the whole location exists in the document


def _is_internal_step(part: int | str) -> bool:
    """pydantic's own steps in a location: validator wrappers such as `function-after[...]`."""
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def _node_line(node: Any) -> int | None:
    line = node.lc.line if isinstance(node, CommentedMap | CommentedSeq) else None
    return line + 1 if isinstance(line, int) else None


def _recorded_line(node: Any, key: int | str) -> int | None:
    """The line the parser recorded for a key or item; keys from a `<<:` merge have none."""
    if not isinstance(node, CommentedMap | CommentedSeq):
        return None
    positions = getattr(node.lc, "data", None)
    position = positions.get(key) if isinstance(positions, dict) else None
    return position[0] + 1 if position else None


def _join(path: str, part: int | str, in_mapping: bool) -> str:
    if isinstance(part, int) and not in_mapping:
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def place_of(document: Any, location: Location, *, may_be_missing: bool = True) -> Place:
    """Follow a pydantic error location through the document, dropping union-member steps.

    A step that the current mapping lacks is a union tag (`snmp.2c.community_file`, `snmp.3`)
    unless it is the last step and `may_be_missing`: then it is a missing key, and the line is the
    parent mapping's line.
    """
    node, line, found = document, _node_line(document), True
    path = ""
    for index, part in enumerate(location):
        last = index == len(location) - 1
        if _is_internal_step(part):
            continue
        if found and isinstance(node, Mapping):
            if part in node:
                line = _recorded_line(node, part) or line
                node = node[part]
            elif not (last and may_be_missing):
                continue  # a union member's tag, not a key the user wrote
            else:
                found = False
            path = _join(path, part, in_mapping=True)
        elif (
            found
            and isinstance(node, Sequence)
            and not isinstance(node, str)
            and isinstance(part, int)
            and 0 <= part < len(node)
        ):
            line = _recorded_line(node, part) or line
            node = node[part]
            path = _join(path, part, in_mapping=False)
        else:
            found = False
            path = _join(path, part, in_mapping=False)
    return Place(path, line, node, found)


# --- What the models allow at a location, for "did you mean" and discriminator hints ---------


def _flatten(annotation: Any) -> list[Any]:
    """The concrete types an annotation may take: unwraps Annotated, Optional and unions."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [leaf for arg in typing.get_args(annotation) for leaf in _flatten(arg)]
    return [annotation]


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def _field_types(model: type[BaseModel], key: int | str) -> list[Any] | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return _flatten(info.annotation)
    return None


def _step(candidate: Any, part: int | str) -> list[Any] | None:
    if _is_model(candidate):
        return _field_types(candidate, part)
    origin, args = typing.get_origin(candidate), typing.get_args(candidate)
    if origin is list and isinstance(part, int) and args:
        return _flatten(args[0])
    if origin is dict and len(args) == 2:
        return _flatten(args[1])
    return None


def _literal_values(candidate: Any) -> list[Any]:
    return [
        value
        for info in candidate.model_fields.values()
        for leaf in _flatten(info.annotation)
        if typing.get_origin(leaf) is typing.Literal
        for value in typing.get_args(leaf)
    ]


def _models_at(model: type[BaseModel], location: Location) -> list[type[BaseModel]]:
    """The model classes that may sit at a raw pydantic location (union tags included)."""
    candidates: list[Any] = [model]
    for part in location:
        if _is_internal_step(part):
            continue
        stepped = [leaf for c in candidates for leaf in (_step(c, part) or [])]
        if stepped:
            candidates = stepped
            continue
        # Not a key anywhere: a union tag. Keep the members whose Literal field holds it.
        models = [c for c in candidates if _is_model(c)]
        tagged = [c for c in models if str(part) in map(str, _literal_values(c))]
        candidates = tagged or models
    return [c for c in candidates if _is_model(c)]


def _allowed_keys(models: list[type[BaseModel]]) -> list[str]:
    keys: list[str] = []
    for model in models:
        for name, info in model.model_fields.items():
            key = info.alias or name
            if key not in keys:
                keys.append(key)
    return keys


def _discriminator_values(models: list[type[BaseModel]], key: str) -> list[str]:
    values: list[str] = []
    for model in models:
        types_ = _field_types(model, key) or []
        for leaf in types_:
            if typing.get_origin(leaf) is typing.Literal:
                values.extend(str(value) for value in typing.get_args(leaf))
    return values


# --- Messages ---------------------------------------------------------------------------------


def _quote(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # str() of an int with thousands of digits raises; nobody needs to see them all.
        text = str(int(value)) if value.bit_length() < 200 else "a number with hundreds of digits"
    elif isinstance(value, float):
        text = repr(float(value))
    elif isinstance(value, str):
        text = repr(str(value))
    else:
        text = repr(value)
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."


def _number(value: Any) -> str:
    """A bound as the user wrote it: 100, not 100.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(value: Any) -> str:
    """How a YAML value reads to the person who wrote it."""
    if value is None:
        description = "an empty value"
    elif isinstance(value, bool):
        description = _quote(value)
    elif isinstance(value, Mapping):
        description = "a mapping of keys"
    elif isinstance(value, str):
        description = f"the text {_quote(value)}"
    elif isinstance(value, int | float):
        description = f"the number {_quote(value)}"
    elif isinstance(value, Sequence):
        description = "a list"
    else:
        description = f"a {type(value).__name__}"
    return description


def _id_hint(value: Any) -> str:
    hint = "use only lowercase letters a-z, digits and '-'"
    if isinstance(value, str) and "_" in value:
        hint += f" (for example {value.lower().replace('_', '-')!r})"
    elif isinstance(value, str) and value.lower() != value:
        hint += f" (for example {value.lower()!r})"
    return hint


def _pattern_message(value: Any, pattern: str) -> str:
    if pattern in (r"^[a-z0-9-]+$", "^[a-z0-9-]+$"):
        return f"{_quote(value)} is not a valid id: {_id_hint(value)}"
    if "@" in pattern:
        return f"{_quote(value)} is not an e-mail address"
    return f"{_quote(value)} does not match the pattern {pattern}"


_TYPE_EXPECTATIONS = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "list_type": "a list",
    "tuple_type": "a list",
    "path_type": "a path",
    "url_type": "a URL",
}

_BOUNDS = {
    "greater_than": ("gt", "must be greater than {}"),
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than": ("lt", "must be less than {}"),
    "less_than_equal": ("le", "must be at most {}"),
}


def _min_length_message(value: Any, ctx: Mapping[str, Any]) -> str:
    if ctx.get("min_length") == 1:
        return "must not be empty"
    return f"must be at least {ctx.get('min_length')} characters"


_MESSAGES: dict[str, Callable[[Any, Mapping[str, Any]], str]] = {
    "literal_error": lambda value, ctx: f"{_quote(value)} is not one of: {ctx.get('expected')}",
    "enum": lambda value, ctx: f"{_quote(value)} is not one of: {ctx.get('expected')}",
    "string_pattern_mismatch": lambda value, ctx: _pattern_message(value, str(ctx.get("pattern"))),
    "string_too_short": _min_length_message,
    "string_too_long": lambda _, ctx: f"is too long: at most {ctx.get('max_length')} characters",
    "too_short": lambda _, ctx: f"needs at least {ctx.get('min_length')} item(s)",
    "too_long": lambda _, ctx: f"takes at most {ctx.get('max_length')} item(s)",
}


def _plain_message(item: Mapping[str, Any]) -> str:
    """A pydantic error in the words of someone who wrote a YAML file."""
    kind, ctx, value = item["type"], item.get("ctx") or {}, item.get("input")
    if kind in _TYPE_EXPECTATIONS:
        return f"expected {_TYPE_EXPECTATIONS[kind]}, got {_describe(value)}"
    if kind in _BOUNDS:
        key, template = _BOUNDS[kind]
        return f"{template.format(_number(ctx.get(key)))}, got {_quote(value)}"
    if kind in _MESSAGES:
        return _MESSAGES[kind](value, ctx)
    message = str(item["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    if kind.startswith("url_"):
        message = f"{_quote(value)} is not a URL: {message[0].lower()}{message[1:]}"
    return message


# --- From a ValidationError to ConfigIssues --------------------------------------------------


def _unknown_key_message(key: int | str, parent: Any, models: list[type[BaseModel]]) -> str:
    allowed = _allowed_keys(models)
    present = set(parent) if isinstance(parent, Mapping) else set()
    choices = [candidate for candidate in allowed if candidate not in present]
    close = difflib.get_close_matches(str(key), choices, n=1, cutoff=0.7)
    if close:
        return f"unknown key {str(key)!r} (did you mean {close[0]!r}?)"
    if allowed:
        return f"unknown key {str(key)!r}; allowed here: {', '.join(allowed)}"
    return f"unknown key {str(key)!r}"


def _tag_issue(
    file: Path, document: Any, item: Mapping[str, Any], models: list[type[BaseModel]]
) -> ConfigIssue:
    """A discriminated union (snmp.version, influxdb.api) whose key is missing or unknown."""
    ctx = item.get("ctx") or {}
    key = str(ctx.get("discriminator", "")).strip("'\"")
    location = tuple(item["loc"])
    expected = _discriminator_values(models, key)
    place = place_of(document, (*location, key))
    if item["type"] == "union_tag_not_found" or not place.found:
        hint = f"; one of: {', '.join(expected)}" if expected else ""
        return ConfigIssue(file, place.path, f"required key is missing{hint}", place.line)
    value = place.node
    message = f"{_quote(value)} is not one of: {', '.join(expected)}"
    if str(value) in expected and not isinstance(value, int):
        message += f" (write {value} without quotes)"
    elif isinstance(value, int | float) and str(value) not in expected:
        quoted = [tag for tag in expected if tag.startswith(str(value))]
        if quoted:
            message += f" (did you mean {quoted[0]}?)"
    return ConfigIssue(file, place.path, message, place.line)


def _issue(
    file: Path, document: Any, model: type[BaseModel], item: Mapping[str, Any]
) -> ConfigIssue:
    location: Location = tuple(item["loc"])
    error = (item.get("ctx") or {}).get("error")
    if isinstance(error, FieldValueError):
        location = (*location, *error.at)
    if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return _tag_issue(file, document, item, _models_at(model, location))
    may_be_missing = item["type"] == "missing" or isinstance(error, FieldValueError)
    place = place_of(document, location, may_be_missing=may_be_missing)
    if item["type"] == "extra_forbidden":
        parent = place_of(document, location[:-1]).node
        message = _unknown_key_message(location[-1], parent, _models_at(model, location[:-1]))
    elif item["type"] == "missing":
        message = "required key is missing"
    elif isinstance(error, FieldValueError):
        message = error.message
    else:
        message = _plain_message(item)
    kind = "secret" if isinstance(error, SecretFileError) else "config"
    return ConfigIssue(file, place.path, message, place.line, kind)


def issues_from_validation(
    path: Path, document: Any, error: ValidationError, model: type[BaseModel] | None = None
) -> list[ConfigIssue]:
    """One ConfigIssue per pydantic error, with the YAML line where known, in file order."""
    model = model or BaseModel
    items = error.errors(include_url=False)
    issues = [_issue(path, document, model, item) for item in items]
    return sorted(issues, key=lambda issue: issue.line or 0)


def validate_document(
    path: Path,
    document: Any,
    model: type[ModelT],
    *,
    check_files: bool = True,
    shape_only: bool = False,
) -> ModelT:
    """Validate an already-parsed document from `path`; raise ConfigError naming every problem.

    `check_files=False` skips every check of secret files, for a reader that only needs the
    file's ids (the collector's inventory does not hold the agents' secrets). `shape_only=True`
    checks that they exist but not what they hold or who may read them: for the repository's
    examples (placeholders, modes git does not keep) and `validate --shape-only`.
    """
    if document is None:
        raise ConfigError([ConfigIssue(path, "", "file is empty")])
    if not isinstance(document, dict):
        message = (
            f"top level must be a mapping of keys (key: value lines), not {_describe(document)}"
        )
        raise ConfigError([ConfigIssue(path, "", message, _node_line(document) or 1)])
    try:
        context = {"config_dir": path.parent, "check_files": check_files, "shape_only": shape_only}
        return model.model_validate(document, context=context)
    except ValidationError as exc:
        raise ConfigError(issues_from_validation(path, document, exc, model)) from exc
    except RecursionError as exc:
        message = "nested too deeply to be a config file"
        raise ConfigError([ConfigIssue(path, "", message)]) from exc


def load_model(
    path: Path | str,
    model: type[ModelT],
    *,
    check_files: bool = True,
    shape_only: bool = False,
) -> ModelT:
    """Load and validate one config file; raise ConfigError naming every problem."""
    path = Path(path)
    return validate_document(
        path, load_yaml(path), model, check_files=check_files, shape_only=shape_only
    )
