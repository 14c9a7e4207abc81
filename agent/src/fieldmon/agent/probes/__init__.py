"""Probe kinds: one module each (probe class, verdict, `KIND`), listed in `registry`."""
