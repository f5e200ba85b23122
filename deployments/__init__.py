"""Registering nightshift on a Prefect server: work pools, deployments, automations (as code)."""
