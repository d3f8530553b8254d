"""Activities: every piece of I/O the workflows need (PostgreSQL, notifications)."""
