"""The ``saft`` command: the composition root, the one place that knows every layer.

Each layer adds its own commands through a ``register(sub)`` function; this package puts them together in one
parser (``main.py``) and holds ``saft serve``, which runs the API and a worker side by side, and the remote
commands (``remote.py``: ``saft datasets``, ``jobs`` and ``usage`` against a running service, through the
Python client; they import nothing of the server's packages but the core's flag definitions). Nothing imports
this package: it sits above ``api`` and ``worker``, which sit above ``saft_service``, which sits above
``saft_core`` (the import rules are in pyproject.toml, checked by ``lint-imports``).
"""
