"""fieldmon: network monitoring for temporary field hospitals."""

__version__ = "0.1.0"
