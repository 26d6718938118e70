"""Queue: series completeness decisions and the durable job store (jobs, dispatches, audit)."""
