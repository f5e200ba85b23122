"""Telemetry adapters: Prometheus metrics pushed by batch runs, and structured logs."""
