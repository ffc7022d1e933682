"""Watching the box from outside: Prometheus metrics (observer and tuner are still to come)."""
