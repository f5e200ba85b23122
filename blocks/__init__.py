"""Prefect blocks: where nightshift's outside systems are, with their secrets."""
