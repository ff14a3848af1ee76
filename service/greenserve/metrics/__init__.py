"""Metrics: the catalog of every metric, the worker counters and their snapshots, the
master's aggregation and /metrics, and the app's own prometheus_client metrics. Stdlib only
but for metrics.py (prometheus_client)."""
