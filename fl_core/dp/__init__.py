"""Differential privacy: accounting (`accounting`) and privacy ledgers (`ledger`)."""
