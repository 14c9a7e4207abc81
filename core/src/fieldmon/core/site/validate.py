"""`fieldmon-agent validate FILE...`: check site files alone and against each other."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fieldmon.core.config.errors import ConfigError, ConfigIssue
from fieldmon.core.config.loader import load_yaml, place_of, validate_document
from fieldmon.core.site.config import SiteConfig


@dataclass
class SiteFileResult:
    """One site file: its config when it is valid, and every issue found in it."""

    path: Path
    config: SiteConfig | None = None
    issues: list[ConfigIssue] = field(default_factory=list)
    document: Any = None  # the parsed YAML, kept to name lines in cross-file issues

    @property
    def ok(self) -> bool:
        """True when the file is usable and clashes with no other file."""
        return self.config is not None and not self.issues


def check_site_file(path: Path) -> SiteFileResult:
    """Parse and validate one site file; never raises for a bad file."""
    result = SiteFileResult(path)
    try:
        result.document = load_yaml(path)
        result.config = validate_document(path, result.document, SiteConfig)
    except ConfigError as exc:
        result.issues.extend(exc.issues)
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
        config = result.config
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
        if owner is not None and owner.config is not None and owner.config.site != config.site:
            message = (
                f"agent id {config.agent.id!r} is also used at site {owner.config.site!r} "
                f"({_where(owner, ('agent', 'id'))}); an agent id is its MQTT username and "
                "belongs to one site"
            )
            line = place_of(result.document, ("agent", "id")).line
            issues.append(ConfigIssue(result.path, "agent.id", message, line))
        elif owner is None:
            agent_owner[config.agent.id] = result
    return issues


def check_site_files(paths: Iterable[Path]) -> list[SiteFileResult]:
    """Check each file once (a path given twice is one file), then the files against each other."""
    results: list[SiteFileResult] = []
    seen: set[Path] = set()
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            continue
        seen.add(key)
        results.append(check_site_file(Path(path)))
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


def validate_site_files(paths: list[Path], out: TextIO, err: TextIO) -> int:
    """Print `OK  FILE: summary` per good file and `FILE:LINE: FIELD: message` per issue.

    Returns the exit status: 0 when every file is valid, 1 otherwise.
    """
    results = check_site_files(paths)
    for result in results:
        if result.ok and result.config is not None:
            print(f"OK  {result.path}: {summary(result.config)}", file=out)
        for issue in result.issues:
            print(issue, file=err)
    failed = sum(not result.ok for result in results)
    if failed:
        verb = "has" if failed == 1 else "have"
        print(f"{failed} of {_plural(len(results), 'file')} {verb} problems", file=err)
        return 1
    return 0
