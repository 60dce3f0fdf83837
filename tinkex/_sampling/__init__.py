"""The sampling core: one call's loops (whole call, submit, poll), streaming, the future, pickling."""
