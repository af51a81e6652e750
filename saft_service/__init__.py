"""Code that both the API and the worker need: settings, tables, the job state machine, the job spec, the
queue, and the service's commands (migrate, keys, and datasets/jobs against a running service). It imports only
the core."""

__version__ = "0.1.0"
