"""Benchmarks: the load harness against the no-op floors, and micro-benchmarks of the hot-path pieces."""
