"""Benchmarks that measure fieldmon beside the tools users would pick instead."""
