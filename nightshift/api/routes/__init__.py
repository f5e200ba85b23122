"""One router per resource of the gateway: files, batches, jobs, ops."""
