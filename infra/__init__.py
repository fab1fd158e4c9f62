"""Adapters to the outside: config files, the state folder, Prefect, the exchange, MLflow."""
