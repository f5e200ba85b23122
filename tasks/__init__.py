"""Prefect tasks: thin typed wrappers over nightshift.core, nightshift.engine and nightshift.storage.

A task owns retries, naming and logging; what is valid and how it is computed lives below it.
"""
