"""Processes the demo, the end-to-end tests and the benchmarks share: Envoy rendered from the shipped templates,
the sidecar as a child process, an echo upstream. Never imported by the serving code."""
