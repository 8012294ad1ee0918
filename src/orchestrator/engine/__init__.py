"""The worker: claiming, limits, leases, retries and recovery."""
