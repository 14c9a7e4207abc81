"""Probe kinds: one module each, each with its config model and an async collect()."""
