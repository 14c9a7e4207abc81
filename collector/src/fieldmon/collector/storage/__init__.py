"""Storage backends behind one Writer interface, chosen by the config's `api` key."""
