"""Domain models and pure decision logic (no I/O)."""
