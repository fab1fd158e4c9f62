"""Thin Prefect tasks: load through infra, call one fl_core/validation function, save or log."""
