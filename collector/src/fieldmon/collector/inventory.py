"""Which agents belong to which site, read from the site_configs folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fieldmon.collector.trust import SiteTrust
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.site.config import SiteConfig, load_site_config

logger = logging.getLogger(__name__)

# Site files of closed sites (`fieldmon-collector decommission` moves them here): known, so their
# ids stay taken and their data readable, but they get no alerts and their agents no login.
CLOSED_DIR = "closed"


@dataclass
class Inventory:
    """The registered sites; an envelope from an agent not listed here is rejected.

    `trust` holds, per site, what its agent may send (trust.SiteTrust), computed once here so
    ingest judges each sample with a few look-ups; a SIGHUP builds a new Inventory.
    """

    sites: dict[str, SiteConfig] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Which file each site came from (for the messages of `broker-acl`).
    paths: dict[str, Path] = field(default_factory=dict)
    # Closed sites (site_configs/closed/): site id -> its config and its file. Never in `sites`:
    # no alert state, no board entry, and their agents' envelopes are refused.
    closed: dict[str, SiteConfig] = field(default_factory=dict)
    closed_paths: dict[str, Path] = field(default_factory=dict)
    trust: dict[str, SiteTrust] = field(init=False)

    def __post_init__(self) -> None:
        self.trust = {site: SiteTrust.build(config) for site, config in self.sites.items()}

    def is_registered(self, site: str, agent: str) -> bool:
        """True when `agent` is the agent of `site` in its site file."""
        config = self.sites.get(site)
        return config is not None and config.agent.id == agent

    def is_closed(self, site: str, agent: str) -> bool:
        """True when `agent` was the agent of `site` before the site was closed."""
        config = self.closed.get(site)
        return config is not None and config.agent.id == agent


def _site_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def load_closed(folder: Path) -> tuple[dict[str, SiteConfig], dict[str, Path], list[str]]:
    """The closed sites in `folder/closed/` (a missing folder: none), their files and problems.

    A closed file that no longer loads is reported; it takes no id then.
    """
    sites: dict[str, SiteConfig] = {}
    paths: dict[str, Path] = {}
    problems: list[str] = []
    closed = folder / CLOSED_DIR
    if not closed.is_dir():
        return sites, paths, problems
    for path in _site_files(closed):
        try:
            config = load_site_config(path, check_files=False)
        except ConfigError as exc:
            problems.extend(f"{issue} (a closed site's file)" for issue in exc.issues)
            continue
        sites[config.site] = config
        paths[config.site] = path
    return sites, paths, problems


def load_inventory(folder: Path) -> Inventory:
    """Load every site file; an invalid file is reported and skipped, never fatal.

    A file that claims a site id or an agent id another file already claims is skipped too:
    two sites sharing one agent login would let that agent write both sites' rows. The closed
    sites (`closed/`) are read too, into `closed`; a site file that also claims a closed
    site's id is a problem (its data would mix with the closed site's) but is still loaded.
    """
    sites: dict[str, SiteConfig] = {}
    paths: dict[str, Path] = {}
    problems: list[str] = []
    if not folder.is_dir():
        problems.append(f"{folder}: site_configs folder does not exist")
        logger.error("site_configs folder does not exist", extra={"path": str(folder)})
        return Inventory(problems=problems)
    agents: dict[str, Path] = {}
    for path in _site_files(folder):
        try:
            config = load_site_config(path, check_files=False)
        except ConfigError as exc:
            problems.extend(str(issue) for issue in exc.issues)
            logger.error("skipped an invalid site file", extra={"errors": str(exc)})
            continue
        message = None
        if config.site in sites:
            message = f"{path}: site {config.site!r} is already defined by another file; skipped"
        elif config.agent.id in agents:
            message = (
                f"{path}: agent id {config.agent.id!r} is already the agent of "
                f"{agents[config.agent.id]}; skipped (one login per site)"
            )
        if message is not None:
            problems.append(message)
            logger.error(message)
            continue
        sites[config.site] = config
        paths[config.site] = path
        agents[config.agent.id] = path
    closed, closed_paths, closed_problems = load_closed(folder)
    problems.extend(closed_problems)
    for site in sorted(set(sites) & set(closed)):
        message = (
            f"{paths[site]}: site {site!r} was closed ({closed_paths[site]}) and is open again: "
            "its rows mix with the closed site's; delete the closed file if that is meant"
        )
        problems.append(message)
        logger.error(message)
        del closed[site], closed_paths[site]
    logger.info("inventory loaded", extra={"sites": sorted(sites), "closed": sorted(closed)})
    return Inventory(
        sites=sites, problems=problems, paths=paths, closed=closed, closed_paths=closed_paths
    )
