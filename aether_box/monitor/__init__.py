"""Watching the box: Prometheus metrics, and an observer that publishes snapshots and alerts."""
