"""`fieldmon-agent validate FILE...`: check site files alone and against each other."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fieldmon.core.config.errors import ConfigError, ConfigIssue
from fieldmon.core.config.loader import load_yaml, place_of, validate_document
from fieldmon.core.site.config import SiteConfig
from fieldmon.core.site.security import SecurityWarning, security_warnings


@dataclass
class SiteFileResult:
    """One site file: its config when it is valid, and every issue found in it."""

    path: Path
    config: SiteConfig | None = None
    issues: list[ConfigIssue] = field(default_factory=list)
    document: Any = None  # the parsed YAML, kept to name lines in cross-file issues
    # The config as far as its shape goes, when only its secret files are not ready: for the
    # summary line, cross-file checks and security warnings of a file otherwise valid.
    shape: SiteConfig | None = None
    warnings: list[SecurityWarning] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the file is usable and clashes with no other file."""
        return self.config is not None and not self.issues

    @property
    def secrets_only(self) -> bool:
        """True when every problem is a secret file not ready (the file itself is valid)."""
        return bool(self.issues) and all(issue.kind == "secret" for issue in self.issues)


def check_site_file(path: Path, *, shape_only: bool = False) -> SiteFileResult:
    """Parse and validate one site file; never raises for a bad file.

    `shape_only` checks that secret files exist, not their content or modes (see
    `fieldmon.core.config.secrets`).
    """
    result = SiteFileResult(path)
    try:
        result.document = load_yaml(path)
        result.config = validate_document(path, result.document, SiteConfig, shape_only=shape_only)
    except ConfigError as exc:
        result.issues.extend(exc.issues)
        if result.secrets_only:
            try:
                result.shape = validate_document(path, result.document, SiteConfig, shape_only=True)
            except ConfigError:
                result.shape = None
    valid = result.config or result.shape
    if valid is not None:
        result.warnings = security_warnings(valid)
    return result


def _where(result: SiteFileResult, location: tuple[str, ...]) -> str:
    line = place_of(result.document, location).line
    return f"{result.path}:{line}" if line else str(result.path)


def cross_file_issues(results: list[SiteFileResult]) -> list[ConfigIssue]:
    """Clashes between valid files: a site id claimed twice, or one agent id at two sites."""
    issues: list[ConfigIssue] = []
    site_owner: dict[str, SiteFileResult] = {}
    agent_owner: dict[str, SiteFileResult] = {}
    for result in results:
        config = result.config or result.shape
        if config is None:
            continue
        if config.site in site_owner:
            first = site_owner[config.site]
            message = (
                f"site id {config.site!r} is also claimed by {_where(first, ('site',))}; "
                "each site has exactly one file"
            )
            line = place_of(result.document, ("site",)).line
            issues.append(ConfigIssue(result.path, "site", message, line))
        else:
            site_owner[config.site] = result
        owner = agent_owner.get(config.agent.id)
        owner_config = owner.config or owner.shape if owner is not None else None
        if owner is not None and owner_config is not None and owner_config.site != config.site:
            message = (
                f"agent id {config.agent.id!r} is also used at site {owner_config.site!r} "
                f"({_where(owner, ('agent', 'id'))}); an agent id is its MQTT username and "
                "belongs to one site"
            )
            line = place_of(result.document, ("agent", "id")).line
            issues.append(ConfigIssue(result.path, "agent.id", message, line))
        elif owner is None:
            agent_owner[config.agent.id] = result
    return issues


def check_site_files(paths: Iterable[Path], *, shape_only: bool = False) -> list[SiteFileResult]:
    """Check each file once (a path given twice is one file), then the files against each other."""
    results: list[SiteFileResult] = []
    seen: set[Path] = set()
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            continue
        seen.add(key)
        results.append(check_site_file(Path(path), shape_only=shape_only))
    by_path = {result.path: result for result in results}
    for issue in cross_file_issues(results):
        by_path[issue.file].issues.append(issue)
    return results


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary(config: SiteConfig) -> str:
    """One line that tells the engineer what the file describes."""
    text = (
        f"site {config.site} (agent {config.agent.id}), {_plural(len(config.links), 'link')}, "
        f"{_plural(len(config.snmp_devices), 'SNMP device')}"
    )
    if config.services:
        text += f", {_plural(len(config.services), 'service')}"
    return text


def _warning_line(result: SiteFileResult, warning: SecurityWarning) -> str:
    line = place_of(result.document, warning.at).line
    where = f"{result.path}:{line}" if line else str(result.path)
    return f"WARN  {where}: {warning.path}: {warning.message}"


def validate_site_files(
    paths: list[Path], out: TextIO, err: TextIO, *, shape_only: bool = False
) -> int:
    """Print `OK  FILE: summary` per good file and `FILE:LINE: FIELD: message` per issue, and
    `WARN  FILE:LINE: FIELD: message` per exposing setting (warnings never fail a file).

    A secret file that is not ready (readable by others, still an example's placeholder) is an
    issue like any other; when such issues are all a file has, the summary says so. With
    `shape_only` secret files must exist but their content and modes are not checked: the
    repository's examples, a config repository's CI.

    Returns the exit status: 0 when every file is valid, 1 otherwise.
    """
    results = check_site_files(paths, shape_only=shape_only)
    for result in results:
        if result.ok and result.config is not None:
            shape = " (shape only: secrets not checked)" if shape_only else ""
            print(f"OK  {result.path}: {summary(result.config)}{shape}", file=out)
        for warning in result.warnings:
            print(_warning_line(result, warning), file=out)
        for issue in result.issues:
            print(issue, file=err)
    failed = [result for result in results if not result.ok]
    if failed:
        verb = "has" if len(failed) == 1 else "have"
        line = f"{len(failed)} of {_plural(len(results), 'file')} {verb} problems"
        if all(result.secrets_only for result in failed):
            line += (
                ": only secret files not ready (everything else is valid) - put the real "
                "secrets in place, private to the service's user; --shape-only checks the rest"
            )
        print(line, file=err)
        return 1
    return 0
