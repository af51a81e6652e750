"""The one palette of the generated images: the procedural world's colours, which the demo shapes use too.

The bundled saft-tiny model was trained on world renders drawn with these exact values, so changing one
changes what that model has seen: keep them as they are.
"""

from __future__ import annotations

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (235, 205, 35),
    "purple": (135, 55, 185), "orange": (240, 135, 25), "pink": (235, 120, 180), "brown": (130, 80, 40),
}
