"""Seeing what services do: counters, Prometheus metrics, traces and logs.

`stats` counts in plain objects (always on, nearly free); `metrics` exports them to
Prometheus (extra ``metrics``); `tracing` makes OpenTelemetry spans (extra ``otel``);
`logs` formats the log lines. The worker layer and the clients report to a `CallObserver`
(`observer`), which feeds whichever of these are on; without the extras nothing of them
is imported.
"""
