"""Reading a scene back from its pixels, with no neural judge, and comparing it with its prompt.

`read_scene` finds the background (the median of the border), the object (pixels far from the
background), its colour (the median of its inner pixels, nearest palette entry), its position (the
centroid's cell of a 3x3 grid), its size (the bounding box's side) and its shape: a square fills its
bounding box and all four corners; a triangle fills about half, its bottom corners but not its top
ones; a circle about pi/4 and no corner. `adherence` scores images against their prompts' specs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tiny_train.grammar import COLOURS, OBJECT_COLOURS, PALETTE, POSITIONS, SHAPES, SIZES, Spec

_PAL = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
_OBJECT_THRESHOLD = 60.0  # RGB distance from the background that counts as the object
_MIN_PIXELS_FRACTION = 0.002


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None: no object found
    shape: str | None
    position: str | None
    size: str | None
    fill: float = 0.0

    def spec(self) -> Spec:
        idx = lambda xs, v: xs.index(v) if v in xs else -1  # noqa: E731
        return Spec(idx(SIZES, self.size), idx(COLOURS, self.colour), idx(SHAPES, self.shape),
                    idx(POSITIONS, self.position), idx(COLOURS, self.background))


def _nearest(rgb: np.ndarray, names: list[str]) -> str:
    pal = np.array([PALETTE[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((pal - rgb) ** 2).sum(1)))]


def read_scene(image) -> Reading:
    """What a PIL image (or an HxWx3 uint8 array) shows."""
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    h, w, _ = a.shape
    border = np.concatenate([a[:2].reshape(-1, 3), a[-2:].reshape(-1, 3), a[:, :2].reshape(-1, 3), a[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, 0)
    background = _nearest(bg_rgb, COLOURS)
    mask = np.sqrt(((a - bg_rgb) ** 2).sum(2)) > _OBJECT_THRESHOLD
    if mask.sum() < _MIN_PIXELS_FRACTION * h * w:
        return Reading(background, None, None, None, None)
    ys, xs = np.nonzero(mask)
    # the bounding box, robust to a few stray pixels
    y0, y1 = np.percentile(ys, [0.5, 99.5])
    x0, x1 = np.percentile(xs, [0.5, 99.5])
    bh, bw = max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)
    inside = mask[int(y0):int(y1) + 1, int(x0):int(x1) + 1]
    fill = float(inside.mean())
    # colour: the median of pixels well inside the object (no anti-aliased edge)
    core = mask.copy()
    core[1:] &= mask[:-1]; core[:-1] &= mask[1:]; core[:, 1:] &= mask[:, :-1]; core[:, :-1] &= mask[:, 1:]  # noqa: E702
    pix = a[core] if core.sum() >= 4 else a[mask]
    colour = _nearest(np.median(pix, 0), COLOURS)
    # corners of the bounding box, each a patch of 15% of its sides
    ch, cw = max(int(round(bh * 0.15)), 1), max(int(round(bw * 0.15)), 1)
    corners = [float(inside[:ch, :cw].mean()), float(inside[:ch, -cw:].mean()),
               float(inside[-ch:, :cw].mean()), float(inside[-ch:, -cw:].mean())]
    tl, tr, bl, br = (c > 0.5 for c in corners)
    if tl and tr and bl and br:
        shape = "square"
    elif bl and br and not (tl or tr):
        shape = "triangle"
    elif fill > 0.9:
        shape = "square"
    elif fill < 0.64:
        shape = "triangle"
    else:
        shape = "circle"
    cy, cx = ys.mean() / h, xs.mean() / w
    position = POSITIONS[min(int(cy * 3), 2) * 3 + min(int(cx * 3), 2)]
    side = max(bh / h, bw / w) / 2  # the half-extent, as a fraction of the side
    size = SIZES[0] if side < 0.10 else SIZES[1] if side < 0.14 else SIZES[2]
    return Reading(background, colour, shape, position, size, fill)


def matches(spec: Spec, reading: Reading) -> dict[str, bool | None]:
    """Per attribute: whether the reading shows what `spec` says (None where it says nothing)."""
    said = reading.spec()
    return {name: (None if want < 0 else want == got)
            for name, want, got in zip(("size", "colour", "shape", "position", "background"), spec.as_tuple(), said.as_tuple())}


def adherence(pairs) -> dict[str, float]:
    """[(spec, image)] -> per attribute, the percentage of images that show what their prompt said."""
    hits: dict[str, list[bool]] = {}
    for spec, image in pairs:
        for k, v in matches(spec, read_scene(image)).items():
            if v is not None:
                hits.setdefault(k, []).append(v)
    return {k: round(100.0 * sum(v) / len(v), 1) for k, v in hits.items()}


__all__ = ["Reading", "read_scene", "matches", "adherence", "OBJECT_COLOURS"]
