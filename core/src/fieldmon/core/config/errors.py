"""Config errors that name the file, the field path and the YAML line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one config file."""

    file: Path
    path: str
    message: str
    line: int | None = None
    # "config": the file is wrong. "secret": the file is right but a secret or certificate file
    # it names is not ready (readable by others, an example's placeholder); see config.secrets.
    kind: str = "config"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}"
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used; carries every issue found in it."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


class FieldValueError(ValueError):
    """A validator's complaint about one key below the value it validates.

    pydantic places a model validator's error at the model itself; raising this instead lets the
    loader point the field path and the line at the key that is actually wrong, e.g.
    `FieldValueError(("broker", "username"), "must equal agent.id")` from AgentSection.
    """

    def __init__(self, at: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.at = at
        self.message = message
