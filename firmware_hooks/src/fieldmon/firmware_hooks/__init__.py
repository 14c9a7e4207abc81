"""The boundary to device firmware: Pi health, watchdog, and event hook scripts."""
