"""The generators' commands: ``saft synth`` (demo shapes) and ``saft world domains|render``.

Like every layer, the package adds its commands to the ``saft`` parser through ``register(sub)`` (composed in
``saft_cli``); the generators are imported inside the commands, so building the parser stays cheap. Errors a user can fix are ``ConfigError``s, which
the ``saft`` command turns into exit status 2 and a one-line message.
"""

from __future__ import annotations

import argparse

from saft_core.cli import Subcommands
from saft_core.errors import ConfigError


def cmd_synth(args: argparse.Namespace) -> int:
    from .shapes import DEFAULT_CLASSES, render_shapes

    root = render_shapes(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.per_class} images per class for {len(DEFAULT_CLASSES)} classes to {root}")
    return 0


def cmd_world_domains(args: argparse.Namespace) -> int:
    from .world import DOMAINS

    print("\n".join(DOMAINS))
    return 0


def cmd_world_render(args: argparse.Namespace) -> int:
    from .world import CLASSES, DOMAINS, Shift, render_image_folder

    if args.domain not in DOMAINS:
        raise ConfigError(f"unknown domain {args.domain!r}; domains: {', '.join(DOMAINS)}")
    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else CLASSES
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ConfigError(f"unknown classes {unknown}; classes: {', '.join(CLASSES)}")
    if args.per_class < 1:
        raise ConfigError("--per-class must be >= 1")
    root = render_image_folder(args.out, args.domain, args.per_class, args.seed, classes=classes,
                               shift=Shift.v2() if args.shifted else None, size=args.size)
    print(f"wrote {args.per_class * len(classes)} {args.domain} images ({len(classes)} classes) to {root}")
    return 0


def register(sub: Subcommands) -> None:
    """Add ``synth`` and ``world`` to the ``saft`` command's sub-commands; each sets ``func`` to run."""
    p = sub.add_parser("synth", help="write a small generated ImageFolder (coloured shapes) for demos")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("world", help="the procedural image-text world (domains, renders)")
    wsub = p.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")
    w = wsub.add_parser("domains", help="print the domain names, one a line")
    w.set_defaults(func=cmd_world_domains)
    w = wsub.add_parser("render", help="write an ImageFolder of one domain")
    w.add_argument("--domain", required=True)
    w.add_argument("--per-class", type=int, required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True)
    w.add_argument("--classes", help="comma-separated subset of the classes (default: all)")
    w.add_argument("--shifted", action="store_true", help="shifted generation parameters (a 'V2' resample)")
    w.add_argument("--size", type=int, default=64, help="image side in pixels")
    w.set_defaults(func=cmd_world_render)
