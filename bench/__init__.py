"""Benchmarks: each prints a table comparing reelmill with the bare tool, side by side in one
run. ``python -m bench [upload|watch ...]``."""
