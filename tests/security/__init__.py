"""Attacks on the broker and the collector with a stolen agent's login, on real servers."""
