"""Prefect flows (wiring only) and the `fedsilo` command line."""
