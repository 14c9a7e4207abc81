"""Which agents belong to which site, read from the site_configs folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fieldmon.core.config.errors import ConfigError
from fieldmon.core.site.config import SiteConfig, load_site_config

logger = logging.getLogger(__name__)


@dataclass
class Inventory:
    """The registered sites; an envelope from an agent not listed here is rejected."""

    sites: dict[str, SiteConfig] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def is_registered(self, site: str, agent: str) -> bool:
        """True when `agent` is the agent of `site` in its site file."""
        config = self.sites.get(site)
        return config is not None and config.agent.id == agent


def load_inventory(folder: Path) -> Inventory:
    """Load every site file; an invalid file is reported and skipped, never fatal."""
    inventory = Inventory()
    if not folder.is_dir():
        inventory.problems.append(f"{folder}: site_configs folder does not exist")
        logger.error("site_configs folder does not exist", extra={"path": str(folder)})
        return inventory
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            config = load_site_config(path, check_files=False)
        except ConfigError as exc:
            inventory.problems.extend(str(issue) for issue in exc.issues)
            logger.error("skipped an invalid site file", extra={"errors": str(exc)})
            continue
        if config.site in inventory.sites:
            message = f"{path}: site {config.site!r} is already defined by another file; skipped"
            inventory.problems.append(message)
            logger.error(message)
            continue
        inventory.sites[config.site] = config
    logger.info("inventory loaded", extra={"sites": sorted(inventory.sites)})
    return inventory
