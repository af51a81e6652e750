"""Code that both the API and the worker need: settings, tables, the job state machine, the CLI."""

__version__ = "0.1.0"
