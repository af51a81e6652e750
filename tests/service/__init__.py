"""Service tests: the API, the worker and the store, with real processes, Postgres and Redis."""
