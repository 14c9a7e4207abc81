"""Which agents belong to which site, read from the site_configs folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fieldmon.collector.trust import SiteTrust
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.site.config import SiteConfig, load_site_config

logger = logging.getLogger(__name__)


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
    trust: dict[str, SiteTrust] = field(init=False)

    def __post_init__(self) -> None:
        self.trust = {site: SiteTrust.build(config) for site, config in self.sites.items()}

    def is_registered(self, site: str, agent: str) -> bool:
        """True when `agent` is the agent of `site` in its site file."""
        config = self.sites.get(site)
        return config is not None and config.agent.id == agent


def load_inventory(folder: Path) -> Inventory:
    """Load every site file; an invalid file is reported and skipped, never fatal.

    A file that claims a site id or an agent id another file already claims is skipped too:
    two sites sharing one agent login would let that agent write both sites' rows.
    """
    sites: dict[str, SiteConfig] = {}
    paths: dict[str, Path] = {}
    problems: list[str] = []
    if not folder.is_dir():
        problems.append(f"{folder}: site_configs folder does not exist")
        logger.error("site_configs folder does not exist", extra={"path": str(folder)})
        return Inventory(problems=problems)
    agents: dict[str, Path] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
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
    logger.info("inventory loaded", extra={"sites": sorted(sites)})
    return Inventory(sites=sites, problems=problems, paths=paths)
