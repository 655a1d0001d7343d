"""Runnable end-to-end examples (see each module's docstring)."""
