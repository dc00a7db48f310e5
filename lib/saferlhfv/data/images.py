"""Procedural pictures for BeaverTails-V-mini, drawn with Pillow.

Every object of :data:`saferlhfv.data.content.OBJECTS` is a list of primitives
(polygons, ellipses, rectangles, lines, bitmap text) in unit coordinates centred on
(0, 0), roughly inside [-0.5, 0.5]. A picture places one object with a random
scale, rotation, offset, colour jitter and background; objects have distinct
shapes *and* dominant colours so that a small vision tower can tell them apart at
48 px. Three variants:

* ``"object"``: the drawing alone;
* ``"labeled"``: a smaller drawing with its name written under it;
* ``"sign"``: only a word on a board (a typographic prompt: the picture *says*
  "PILLS" instead of showing them).

Text is drawn with a 5 x 7 pixel font (:data:`~saferlhfv.data.content.FONT_5X7`),
so pictures are identical on every machine. Drawing happens at twice the size and
is reduced with a Lanczos filter (anti-aliasing); everything is seeded by the
``random.Random`` passed in, so the same seed gives the same PNG bytes.
"""

from __future__ import annotations

import io
import math
import random

from PIL import Image, ImageDraw

from saferlhfv.data.content import FONT_5X7, OBJECTS

__all__ = ["draw_object_image", "png_bytes", "VARIANTS", "BACKGROUNDS"]

VARIANTS = ("object", "labeled", "sign")

#: pale backgrounds (each jittered a little).
BACKGROUNDS = (
    (236, 236, 236),
    (245, 238, 220),
    (222, 234, 246),
    (226, 242, 224),
    (246, 228, 232),
    (238, 232, 246),
    (200, 205, 212),
)

Color = tuple[int, int, int]

# --------------------------------------------------------------------------- primitives


def _ellipse(cx, cy, rx, ry, n=24):
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _stadium(cx, cy, half_len, r, angle, n=8):
    """A capsule shape split in two halves (returns left half, right half)."""
    ca, sa = math.cos(angle), math.sin(angle)

    def rot(x, y):
        return (cx + x * ca - y * sa, cy + x * sa + y * ca)

    left = (
        [rot(0, -r), rot(-half_len, -r)]
        + [rot(-half_len - r * math.sin(math.pi * k / n), -r * math.cos(math.pi * k / n)) for k in range(n + 1)]
        + [rot(0, r)]
    )
    right = (
        [rot(0, -r), rot(half_len, -r)]
        + [rot(half_len + r * math.sin(math.pi * k / n), -r * math.cos(math.pi * k / n)) for k in range(n + 1)]
        + [rot(0, r)]
    )
    return left, right


def _star(cx, cy, r_out, r_in, n=6):
    pts = []
    for k in range(2 * n):
        r = r_out if k % 2 == 0 else r_in
        a = math.pi * k / n - math.pi / 2
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _text(word, cx, cy, height, color, max_width=0.9):
    """Pixel rectangles of ``word`` in the 5x7 font, centred on (cx, cy)."""
    n = len(word)
    cell = min(height / 7.0, max_width / (6 * n - 1))
    width = cell * (6 * n - 1)
    x0 = cx - width / 2
    y0 = cy - 3.5 * cell
    prims = []
    for i, ch in enumerate(word):
        glyph = FONT_5X7[ch]
        for r, row in enumerate(glyph):
            for c, on in enumerate(row):
                if on:
                    x = x0 + (6 * i + c) * cell
                    y = y0 + r * cell
                    prims.append(("poly", _rect(x, y, x + cell * 1.02, y + cell * 1.02), color, False))
    return prims


# Each drawing returns primitives: ("poly", points, colour, outlined) or ("line", points, colour, width).
# ``rng`` adds small object-specific variation (drop positions, number of pills ...).


def _knife(rng):
    return [
        ("poly", [(-0.08, -0.09), (0.32, -0.09), (0.48, 0.05), (-0.08, 0.05)], (205, 210, 218), True),
        ("line", [(-0.02, -0.05), (0.3, -0.05)], (250, 250, 252), 0.015),
        ("poly", _rect(-0.12, -0.13, -0.07, 0.09), (90, 90, 95), True),
        ("poly", _rect(-0.46, -0.07, -0.12, 0.05), (30, 30, 30), True),
    ]


def _gun(rng):
    return [
        ("poly", _rect(-0.45, -0.22, 0.36, -0.04), (28, 28, 32), True),
        ("poly", [(0.08, -0.05), (0.36, -0.05), (0.3, 0.36), (0.04, 0.36)], (28, 28, 32), True),
        ("line", [(0.06, -0.04), (-0.04, 0.12), (0.06, 0.14)], (28, 28, 32), 0.03),
        ("line", [(-0.42, -0.16), (0.3, -0.16)], (110, 110, 118), 0.015),
    ]


def _pills(rng):
    prims = []
    spots = [(-0.2, -0.17), (0.16, -0.05), (-0.08, 0.2), (0.24, 0.24), (-0.3, 0.08)]
    k = rng.randint(3, 5)
    for cx, cy in spots[:k]:
        left, right = _stadium(cx, cy, 0.11, 0.065, rng.uniform(0, math.pi))
        prims.append(("poly", left, (222, 40, 40), True))
        prims.append(("poly", right, (246, 246, 246), True))
    return prims


def _syringe(rng):
    return [
        ("line", [(-0.5, 0.0), (-0.3, 0.0)], (120, 120, 125), 0.02),
        ("poly", _rect(-0.3, -0.08, 0.2, 0.08), (170, 215, 245), True),
        ("poly", _rect(-0.29, -0.055, 0.02, 0.055), (50, 110, 225), False),
        ("poly", _rect(0.2, -0.025, 0.42, 0.025), (150, 150, 155), True),
        ("poly", _rect(0.42, -0.12, 0.46, 0.12), (150, 150, 155), True),
        ("poly", _rect(0.16, -0.14, 0.2, 0.14), (150, 150, 155), True),
    ]


def _flame(s, dy=0.0):
    pts = [
        (0, -0.48),
        (0.1, -0.3),
        (0.24, -0.2),
        (0.3, -0.02),
        (0.32, 0.16),
        (0.22, 0.34),
        (0, 0.42),
        (-0.22, 0.34),
        (-0.32, 0.16),
        (-0.28, -0.04),
        (-0.16, -0.16),
        (-0.14, -0.3),
    ]
    return [(x * s, y * s + dy) for x, y in pts]


def _fire(rng):
    return [
        ("poly", _flame(1.0), (238, 88, 20), True),
        ("poly", _flame(0.55, 0.13), (255, 214, 52), False),
    ]


def _bomb(rng):
    return [
        ("poly", _ellipse(-0.04, 0.08, 0.32, 0.32), (22, 22, 26), True),
        ("poly", _rect(0.08, -0.28, 0.22, -0.16), (95, 95, 100), True),
        ("line", [(0.15, -0.27), (0.22, -0.38), (0.32, -0.4)], (140, 90, 40), 0.03),
        ("poly", _star(0.36, -0.42, 0.11, 0.05), (255, 220, 40), False),
        ("poly", _ellipse(-0.14, -0.02, 0.06, 0.04), (90, 90, 95), False),
    ]


def _skull(rng):
    bone = (238, 232, 212)
    return [
        ("poly", _ellipse(0, -0.08, 0.3, 0.28), bone, True),
        ("poly", _rect(-0.17, 0.1, 0.17, 0.34), bone, True),
        ("poly", _ellipse(-0.12, -0.04, 0.085, 0.09), (20, 20, 20), False),
        ("poly", _ellipse(0.12, -0.04, 0.085, 0.09), (20, 20, 20), False),
        ("poly", [(0, 0.05), (0.05, 0.14), (-0.05, 0.14)], (20, 20, 20), False),
        ("line", [(-0.08, 0.22), (-0.08, 0.34)], (60, 60, 60), 0.015),
        ("line", [(0.0, 0.22), (0.0, 0.34)], (60, 60, 60), 0.015),
        ("line", [(0.08, 0.22), (0.08, 0.34)], (60, 60, 60), 0.015),
    ]


def _blood(rng):
    red = (150, 0, 12)
    n = 14
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        r = 0.26 * rng.uniform(0.7, 1.25)
        pts.append((0.3 * math.cos(a) * r / 0.26 * 0.95, 0.1 + 0.22 * math.sin(a) * r / 0.26))
    prims = [("poly", pts, red, True)]
    for _ in range(rng.randint(3, 5)):
        a = rng.uniform(0, 2 * math.pi)
        d = rng.uniform(0.36, 0.46)
        cx, cy = d * math.cos(a), 0.05 + 0.8 * d * math.sin(a)
        r = rng.uniform(0.04, 0.07)
        prims.append(("poly", _ellipse(cx, cy, r, r * 1.2, 12), red, True))
    return prims


def _card(rng):
    return [
        ("poly", _rect(-0.44, -0.28, 0.44, 0.28), (30, 80, 205), True),
        ("poly", _rect(-0.32, -0.12, -0.12, 0.04), (232, 190, 60), True),
        ("poly", _rect(-0.44, 0.1, 0.44, 0.14), (15, 40, 120), False),
    ] + [("poly", _rect(-0.3 + 0.12 * k, 0.18, -0.22 + 0.12 * k, 0.22), (240, 240, 240), False) for k in range(5)]


def _passport(rng):
    gold = (232, 196, 80)
    return [
        ("poly", _rect(-0.28, -0.4, 0.28, 0.4), (118, 18, 42), True),
        ("poly", _ellipse(0, -0.04, 0.14, 0.14), gold, False),
        ("poly", _ellipse(0, -0.04, 0.09, 0.09), (118, 18, 42), False),
        ("poly", _rect(-0.16, -0.32, 0.16, -0.27), gold, False),
        ("poly", _rect(-0.16, 0.2, 0.16, 0.25), gold, False),
        ("poly", _rect(-0.1, 0.29, 0.1, 0.32), gold, False),
    ]


def _laptop(rng):
    return [
        ("poly", _rect(-0.36, -0.36, 0.36, 0.1), (60, 62, 72), True),
        ("poly", _rect(-0.31, -0.31, 0.31, 0.05), (80, 205, 232), False),
        ("poly", [(-0.42, 0.12), (0.42, 0.12), (0.5, 0.26), (-0.5, 0.26)], (182, 182, 192), True),
        ("line", [(-0.3, 0.19), (0.3, 0.19)], (120, 120, 130), 0.02),
    ]


def _camera(rng):
    return [
        ("poly", _rect(-0.16, -0.32, 0.1, -0.2), (40, 40, 40), True),
        ("poly", _rect(-0.4, -0.22, 0.4, 0.26), (36, 36, 36), True),
        ("poly", _ellipse(0, 0.02, 0.18, 0.18), (150, 150, 160), True),
        ("poly", _ellipse(0, 0.02, 0.1, 0.1), (30, 55, 130), False),
        ("poly", _ellipse(0.29, -0.14, 0.035, 0.035), (230, 30, 30), False),
    ]


def _cash(rng):
    prims = [
        ("poly", _rect(-0.42, -0.12, 0.34, 0.26), (64, 140, 72), True),
        ("poly", _rect(-0.36, -0.24, 0.42, 0.14), (100, 178, 98), True),
        ("poly", _ellipse(0.03, -0.05, 0.13, 0.13), (64, 140, 72), False),
    ]
    prims += _text("$", 0.03, -0.05, 0.16, (236, 246, 230))
    return prims


def _poison(rng):
    return [
        ("poly", _rect(-0.22, -0.1, 0.22, 0.44), (132, 40, 172), True),
        ("poly", _rect(-0.08, -0.3, 0.08, -0.1), (132, 40, 172), True),
        ("poly", _rect(-0.11, -0.4, 0.11, -0.3), (20, 20, 20), True),
        ("poly", _rect(-0.16, 0.04, 0.16, 0.32), (248, 248, 248), False),
        ("line", [(-0.1, 0.08), (0.1, 0.28)], (20, 20, 20), 0.04),
        ("line", [(0.1, 0.08), (-0.1, 0.28)], (20, 20, 20), 0.04),
    ]


def _barrel(rng):
    return [
        ("poly", _rect(-0.28, -0.36, 0.28, 0.38), (242, 200, 30), True),
        ("poly", _ellipse(0, -0.36, 0.28, 0.07), (210, 172, 20), True),
        ("poly", _rect(-0.28, -0.18, 0.28, -0.1), (25, 25, 25), False),
        ("poly", _rect(-0.28, 0.16, 0.28, 0.24), (25, 25, 25), False),
        ("poly", [(-0.32, 0.38), (0.36, 0.38), (0.46, 0.46), (0.1, 0.44), (-0.4, 0.47)], (60, 200, 60), False),
    ]


def _dog(rng):
    tan, brown = (202, 150, 88), (118, 70, 30)
    return [
        ("line", [(-0.28, 0.0), (-0.44, -0.16)], tan, 0.05),
        ("poly", _ellipse(-0.02, 0.04, 0.3, 0.15), tan, True),
        ("poly", _rect(-0.26, 0.1, -0.18, 0.36), tan, True),
        ("poly", _rect(-0.1, 0.12, -0.02, 0.36), tan, True),
        ("poly", _rect(0.08, 0.12, 0.16, 0.36), tan, True),
        ("poly", _rect(0.18, 0.1, 0.26, 0.36), tan, True),
        ("poly", _ellipse(0.3, -0.14, 0.13, 0.13), tan, True),
        ("poly", _ellipse(0.42, -0.09, 0.08, 0.055), tan, True),
        ("poly", [(0.2, -0.22), (0.28, -0.26), (0.24, -0.04)], brown, True),
        ("poly", _ellipse(0.33, -0.17, 0.025, 0.025), (15, 15, 15), False),
        ("poly", _ellipse(0.49, -0.1, 0.025, 0.02), (15, 15, 15), False),
    ]


def _candy(rng):
    pink, light = (250, 96, 176), (255, 178, 214)
    return [
        ("poly", [(-0.16, 0), (-0.44, -0.17), (-0.4, 0), (-0.44, 0.17)], light, True),
        ("poly", [(0.16, 0), (0.44, -0.17), (0.4, 0), (0.44, 0.17)], light, True),
        ("poly", _ellipse(0, 0, 0.21, 0.17), pink, True),
        ("line", [(-0.1, -0.13), (0.02, 0.15)], (255, 255, 255), 0.03),
        ("line", [(0.02, -0.15), (0.12, 0.1)], (255, 255, 255), 0.03),
    ]


def _apple(rng):
    green = (96, 196, 60)
    return [
        ("poly", _ellipse(-0.1, 0.06, 0.22, 0.27), green, True),
        ("poly", _ellipse(0.1, 0.06, 0.22, 0.27), green, True),
        ("line", [(0.0, -0.18), (0.03, -0.36)], (100, 60, 25), 0.03),
        ("poly", _ellipse(0.12, -0.3, 0.09, 0.045), (40, 120, 40), True),
        ("poly", _ellipse(-0.12, -0.04, 0.05, 0.08), (170, 230, 140), False),
    ]


def _flower(rng):
    prims = [
        ("line", [(0, 0.0), (0, 0.48)], (50, 140, 50), 0.035),
        ("poly", _ellipse(0.1, 0.3, 0.1, 0.04), (50, 140, 50), False),
    ]
    for k in range(6):
        a = 2 * math.pi * k / 6
        prims.append(
            ("poly", _ellipse(0.17 * math.cos(a), -0.12 + 0.17 * math.sin(a), 0.1, 0.1), (252, 252, 252), True)
        )
    prims.append(("poly", _ellipse(0, -0.12, 0.09, 0.09), (250, 196, 0), True))
    return prims


def _book(rng):
    return [
        ("poly", _rect(-0.3, -0.4, 0.3, 0.4), (20, 112, 124), True),
        ("poly", _rect(0.22, -0.37, 0.3, 0.37), (250, 248, 236), False),
        ("poly", _rect(-0.2, -0.26, 0.12, -0.14), (250, 248, 236), False),
        ("poly", _rect(-0.3, -0.4, -0.24, 0.4), (12, 80, 90), False),
    ]


def _ball(rng):
    prims = []
    cols = [(228, 40, 40), (250, 210, 30), (40, 90, 220)]
    n = 18
    for k in range(3):
        pts = [(0.0, 0.0)] + [
            (0.33 * math.cos(2 * math.pi * (k / 3 + j / (3 * n))), 0.33 * math.sin(2 * math.pi * (k / 3 + j / (3 * n))))
            for j in range(n + 1)
        ]
        prims.append(("poly", pts, cols[k], False))
    prims.append(("poly", _ellipse(0, 0, 0.06, 0.06), (255, 255, 255), False))
    return prims


def _phone(rng):
    prims = [
        ("poly", _rect(-0.19, -0.42, 0.19, 0.42), (22, 22, 28), True),
        ("poly", _rect(-0.15, -0.34, 0.15, 0.3), (172, 212, 255), False),
        ("poly", _ellipse(0, 0.36, 0.03, 0.03), (90, 90, 95), False),
    ]
    cols = [(240, 90, 90), (90, 200, 110), (250, 200, 60), (120, 120, 240)]
    for i in range(2):
        for j in range(2):
            x, y = -0.1 + 0.12 * j, -0.26 + 0.12 * i
            prims.append(("poly", _rect(x, y, x + 0.08, y + 0.08), cols[2 * i + j], False))
    return prims


def _letter(rng):
    return [
        ("poly", _rect(-0.42, -0.26, 0.42, 0.26), (246, 240, 222), True),
        ("line", [(-0.42, -0.26), (0, 0.06), (0.42, -0.26)], (150, 140, 120), 0.02),
        ("poly", _ellipse(0, 0.06, 0.06, 0.06), (200, 30, 40), False),
    ]


def _tree(rng):
    green = (40, 150, 56)
    return [
        ("poly", _rect(-0.06, 0.08, 0.06, 0.46), (120, 74, 34), True),
        ("poly", _ellipse(0, -0.2, 0.22, 0.2), green, True),
        ("poly", _ellipse(-0.17, 0.0, 0.18, 0.15), green, True),
        ("poly", _ellipse(0.17, 0.0, 0.18, 0.15), green, True),
    ]


def _cake(rng):
    return [
        ("poly", _rect(-0.32, 0.0, 0.32, 0.36), (132, 80, 40), True),
        ("poly", _rect(-0.34, -0.08, 0.34, 0.04), (252, 246, 240), True),
        ("poly", _ellipse(-0.2, 0.05, 0.05, 0.07), (252, 246, 240), False),
        ("poly", _ellipse(0.12, 0.06, 0.05, 0.08), (252, 246, 240), False),
        ("poly", _rect(-0.03, -0.3, 0.03, -0.08), (230, 60, 70), True),
        ("poly", _flame(0.18, -0.38), (255, 200, 40), False),
    ]


def _flag(rng):
    return [
        ("line", [(-0.36, -0.46), (-0.36, 0.46)], (120, 120, 126), 0.04),
        ("poly", _rect(-0.34, -0.42, 0.4, 0.06), (14, 14, 14), True),
        ("poly", _ellipse(0.03, -0.18, 0.14, 0.14), (245, 245, 245), False),
        ("poly", _ellipse(0.03, -0.18, 0.09, 0.09), (14, 14, 14), False),
        ("line", [(-0.1, -0.31), (0.16, -0.05)], (245, 245, 245), 0.03),
    ]


def _map(rng):
    return [
        ("poly", _rect(-0.44, -0.32, 0.44, 0.32), (236, 216, 160), True),
        ("line", [(-0.15, -0.32), (-0.15, 0.32)], (200, 176, 120), 0.015),
        ("line", [(0.15, -0.32), (0.15, 0.32)], (200, 176, 120), 0.015),
        ("line", [(-0.44, 0.1), (-0.2, 0.0), (0.0, 0.12), (0.2, 0.02), (0.44, 0.12)], (50, 110, 220), 0.03),
        ("line", [(0.08, -0.2), (0.24, -0.04)], (220, 20, 20), 0.035),
        ("line", [(0.24, -0.2), (0.08, -0.04)], (220, 20, 20), 0.035),
        ("line", [(-0.38, -0.2), (-0.05, -0.22)], (120, 120, 120), 0.015),
    ]


def _car(rng):
    return [
        (
            "poly",
            [
                (-0.46, 0.12),
                (-0.46, -0.04),
                (-0.26, -0.08),
                (-0.14, -0.26),
                (0.18, -0.26),
                (0.3, -0.08),
                (0.46, -0.04),
                (0.46, 0.12),
            ],
            (212, 34, 34),
            True,
        ),
        ("poly", [(-0.11, -0.21), (0.02, -0.21), (0.02, -0.09), (-0.2, -0.09)], (180, 225, 250), False),
        ("poly", [(0.06, -0.21), (0.15, -0.21), (0.24, -0.09), (0.06, -0.09)], (180, 225, 250), False),
        ("poly", _ellipse(-0.25, 0.13, 0.1, 0.1), (20, 20, 20), True),
        ("poly", _ellipse(0.25, 0.13, 0.1, 0.1), (20, 20, 20), True),
        ("poly", _ellipse(-0.25, 0.13, 0.04, 0.04), (170, 170, 170), False),
        ("poly", _ellipse(0.25, 0.13, 0.04, 0.04), (170, 170, 170), False),
    ]


def _mask(rng):
    gold = (232, 182, 40)
    return [
        ("line", [(0.3, 0.05), (0.42, 0.44)], (120, 72, 30), 0.03),
        (
            "poly",
            [
                (-0.44, -0.12),
                (-0.2, -0.2),
                (0, -0.1),
                (0.2, -0.2),
                (0.44, -0.12),
                (0.4, 0.08),
                (0.2, 0.16),
                (0.0, 0.06),
                (-0.2, 0.16),
                (-0.4, 0.08),
            ],
            gold,
            True,
        ),
        ("poly", _ellipse(-0.2, -0.03, 0.1, 0.06), (20, 20, 20), False),
        ("poly", _ellipse(0.2, -0.03, 0.1, 0.06), (20, 20, 20), False),
        ("poly", [(-0.3, -0.17), (-0.36, -0.42), (-0.22, -0.2)], (190, 40, 160), False),
    ]


def _adult_photo(rng):
    prims = [("poly", _rect(-0.44, -0.3, 0.44, 0.3), (205, 22, 70), True)]
    prims += _text("XXX", 0.0, 0.0, 0.32, (255, 255, 255), max_width=0.74)
    return prims


_DRAW = {
    "knife": _knife,
    "gun": _gun,
    "pills": _pills,
    "syringe": _syringe,
    "fire": _fire,
    "bomb": _bomb,
    "skull": _skull,
    "blood": _blood,
    "card": _card,
    "passport": _passport,
    "laptop": _laptop,
    "camera": _camera,
    "cash": _cash,
    "poison": _poison,
    "barrel": _barrel,
    "dog": _dog,
    "candy": _candy,
    "apple": _apple,
    "flower": _flower,
    "book": _book,
    "ball": _ball,
    "phone": _phone,
    "letter": _letter,
    "tree": _tree,
    "cake": _cake,
    "flag": _flag,
    "map": _map,
    "car": _car,
    "mask": _mask,
    "adult_photo": _adult_photo,
}
assert set(_DRAW) == set(OBJECTS), set(OBJECTS) ^ set(_DRAW)

# Objects drawn upright mostly (rotating a tree or a bottle a lot looks odd); others turn freely.
_BASE_ROTATION = {"knife": -35.0, "syringe": 30.0}
_MAX_ROTATION = {"knife": 30.0, "syringe": 30.0, "pills": 180.0, "card": 20.0, "letter": 15.0}


# --------------------------------------------------------------------------- rendering


def _jitter(color: Color, delta: tuple[int, int, int]) -> Color:
    return tuple(max(0, min(255, c + d)) for c, d in zip(color, delta))


def _darker(color: Color, f: float = 0.55) -> Color:
    return tuple(int(c * f) for c in color)


def _render(
    draw: ImageDraw.ImageDraw, prims, size: int, scale: float, angle_deg: float, cx: float, cy: float, delta=(0, 0, 0)
):
    """Draw primitives transformed by scale / rotation / centre (unit canvas coords) onto ``draw``."""
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)

    def tf(p):
        x, y = p
        return ((cx + scale * (x * ca - y * sa)) * size, (cy + scale * (x * sa + y * ca)) * size)

    outline_w = max(1, round(size / 64))
    for prim in prims:
        if prim[0] == "poly":
            _, pts, col, outlined = prim
            col = _jitter(col, delta)
            draw.polygon(
                [tf(p) for p in pts],
                fill=col,
                outline=_darker(col) if outlined else None,
                width=outline_w if outlined else 1,
            )
        else:
            _, pts, col, width = prim
            col = _jitter(col, delta)
            draw.line([tf(p) for p in pts], fill=col, width=max(1, round(width * scale * size)), joint="curve")


def draw_object_image(obj: str, variant: str, size: int, rng: random.Random) -> Image.Image:
    """Draw one picture of object ``obj``.

    Args:
        obj: a key of :data:`~saferlhfv.data.content.OBJECTS`.
        variant: ``"object"``, ``"labeled"`` (drawing + its sign word) or ``"sign"`` (sign word only);
            the last two need an object with a ``sign`` word.
        size: side of the square RGB picture in pixels.
        rng: source of all variation (background, scale, rotation, offset, colour jitter).

    Returns:
        A ``size`` x ``size`` RGB ``PIL.Image.Image``.
    """
    spec = OBJECTS[obj]
    if variant not in VARIANTS:
        raise ValueError(f"unknown picture variant {variant!r}; choose one of {VARIANTS}")
    if variant != "object" and not spec.sign:
        raise ValueError(f"object {obj!r} has no sign word, so it has no {variant!r} picture")
    big = 2 * size
    bg = _jitter(rng.choice(BACKGROUNDS), tuple(rng.randint(-8, 8) for _ in range(3)))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    # faint clutter so that the background is not a constant
    for _ in range(rng.randint(0, 3)):
        x, y = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95)
        r = rng.uniform(0.02, 0.05)
        col = _jitter(bg, tuple(rng.choice((-22, 22)) for _ in range(3)))
        draw.ellipse([(x - r) * big, (y - r) * big, (x + r) * big, (y + r) * big], fill=col)
    delta = tuple(rng.randint(-14, 14) for _ in range(3))
    if variant == "sign":
        board = rng.choice([(250, 250, 250), (252, 244, 200), (255, 255, 255)])
        ink = rng.choice([(15, 15, 15), (20, 30, 110), (150, 10, 20)])
        prims = [("poly", _rect(-0.47, -0.24, 0.47, 0.24), board, True)]
        prims += _text(spec.sign, 0.0, 0.0, 0.3, ink, max_width=0.86)
        _render(
            draw,
            prims,
            big,
            rng.uniform(0.92, 1.0),
            rng.uniform(-8, 8),
            0.5 + rng.uniform(-0.02, 0.02),
            0.5 + rng.uniform(-0.1, 0.1),
        )
    elif variant == "labeled":
        _render(
            draw,
            _DRAW[obj](rng),
            big,
            rng.uniform(0.55, 0.62),
            rng.uniform(-10, 10) + _BASE_ROTATION.get(obj, 0),
            0.5 + rng.uniform(-0.06, 0.06),
            0.34,
            delta,
        )
        prims = [("poly", _rect(-0.5, -0.1, 0.5, 0.1), (252, 252, 252), False)]
        prims += _text(spec.sign, 0.0, 0.0, 0.16, (10, 10, 10), max_width=0.9)
        _render(draw, prims, big, 1.0, 0.0, 0.5, 0.82)
    else:
        max_rot = _MAX_ROTATION.get(obj, 15.0)
        scale = rng.uniform(0.68, 0.92)
        room = max(0.0, (1 - scale) / 2 - 0.02)
        _render(
            draw,
            _DRAW[obj](rng),
            big,
            scale,
            _BASE_ROTATION.get(obj, 0) + rng.uniform(-max_rot, max_rot),
            0.5 + rng.uniform(-room, room),
            0.5 + rng.uniform(-room, room),
            delta,
        )
    return img.resize((size, size), Image.LANCZOS)


def png_bytes(img: Image.Image) -> bytes:
    """Encode a picture as PNG (no metadata, so the bytes depend only on the pixels)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()
