"""Programmatic triggers: submit a batch to the pool its deadline allows (Python API; the HTTP
gateway builds on it). Imports stay light: Prefect is loaded on first use, never Ray or vLLM."""

from nightshift.orchestration.submit import Submission, follow_batch, read_pool_states, submit_batch

__all__ = ["Submission", "follow_batch", "read_pool_states", "submit_batch"]
