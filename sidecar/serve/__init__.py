"""Serving: the process lifecycle (start, readiness, reload, drain), the `--workers` supervisor, the admin HTTP
listener and the heap settling done after each (re)load. It composes the transports over the pipeline; nothing
below imports it."""
