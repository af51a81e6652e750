"""saft_worlds: the images the project generates for itself, outside the method.

- ``world``: the procedural image-text world (12 classes, 5 domains, shifted resamples, captions) that the
  bundled saft-tiny model was trained on and the distribution-shift benchmark measures with.
- ``shapes``: small coloured-shape ImageFolders for demos and tests.
- ``palette``: the colours both draw with.
- ``register(sub)``: ``saft synth`` and ``saft world ...`` (``world_commands.py``).

The package uses the core (its errors and its sub-command type) and nothing else of the project; the core
does not import it (the import rules in pyproject.toml hold both).
"""
