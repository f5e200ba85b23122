"""The Prefect adapter: placing a batch and starting its run (``submit``), and a running batch's
progress, events and SLA alerts (``watch``). Prefect is imported on first use, never Ray or vLLM."""
