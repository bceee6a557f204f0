"""The visual language the tiny model learns: colours, shapes, sizes, positions, backgrounds, and
the prompts that name them.

A scene is one flat-coloured object (circle, square or triangle) on a flat background. A prompt names
some or all of its five attributes. What a prompt leaves out is chosen when a training scene is drawn
(`render.fill_unsaid`): an unsaid colour or shape at random; an unsaid size, position or background at
random too, or, as the shipped model was trained (`train.py --usual 1`), the usual one: a medium object
in the centre on white. So "a circle" is a medium circle of any colour in the centre on white, and
"something green" a green object of any shape there. Every prompt the grammar can say is
enumerated once (`prompt_table`), with its attributes (-1 where the prompt says nothing).
A fixed tenth of the complete prompts is held out of training (`held_out`), for the adherence report.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Name -> RGB. Objects take the six chromatic colours; backgrounds any of the nine but the object's.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 225, 30), "green": (30, 170, 60),
    "blue": (30, 80, 220), "purple": (140, 50, 190), "white": (245, 245, 245), "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
COLOURS = list(PALETTE)  # indices into PALETTE
OBJECT_COLOURS = COLOURS[:6]
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "medium", "large"]
# Positions on a 3x3 grid, row-major, with how a prompt says each.
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
POSITION_PHRASES = ["in the top left", "at the top", "in the top right", "on the left", "in the center",
                    "on the right", "in the bottom left", "at the bottom", "in the bottom right"]
ATTRIBUTES = ("size", "colour", "shape", "position", "background")


@dataclass(frozen=True)
class Spec:
    """What a prompt says: an index per attribute, -1 where it says nothing."""

    size: int = -1
    colour: int = -1  # index into COLOURS (an object colour: 0..5)
    shape: int = -1
    position: int = -1
    background: int = -1  # index into COLOURS

    def as_tuple(self) -> tuple[int, ...]:
        return (self.size, self.colour, self.shape, self.position, self.background)

    @property
    def complete(self) -> bool:
        return min(self.as_tuple()) >= 0


def say(spec: Spec, something: bool = False) -> str:
    """The prompt for `spec`. Without a shape the noun is "shape", or with `something` (and no size)
    "something red ..."."""
    words = []
    colour = COLOURS[spec.colour] if spec.colour >= 0 else None
    if spec.shape < 0 and something and spec.size < 0:
        words = ["something"] + ([colour] if colour else [])
    else:
        words = ["a"]
        if spec.size >= 0:
            words.append(SIZES[spec.size])
        if colour:
            words.append(colour)
        words.append(SHAPES[spec.shape] if spec.shape >= 0 else "shape")
    if spec.position >= 0:
        words.append(POSITION_PHRASES[spec.position])
    if spec.background >= 0:
        words += ["on", "a" if COLOURS[spec.background][0] not in "aeiou" else "an", COLOURS[spec.background], "background"]
    return " ".join(words)


def prompt_table() -> list[tuple[str, Spec]]:
    """Every prompt of the grammar, once, in a fixed order, with what it says. Also the bare words
    ("red", "circle") that a negative prompt may be."""
    out: list[tuple[str, Spec]] = []
    seen: set[str] = set()

    def add(text: str, spec: Spec) -> None:
        if text not in seen:
            seen.add(text)
            out.append((text, spec))

    for size in range(-1, len(SIZES)):
        for colour in range(-1, len(OBJECT_COLOURS)):
            for shape in range(-1, len(SHAPES)):
                for pos in range(-1, len(POSITIONS)):
                    for bg in range(-1, len(COLOURS)):
                        if bg >= 0 and bg == colour:
                            continue
                        spec = Spec(size, colour, shape, pos, bg)
                        add(say(spec), spec)
                        if shape < 0 and size < 0:
                            add(say(spec, something=True), spec)
    for c in range(len(OBJECT_COLOURS)):
        add(COLOURS[c], Spec(colour=c))
    for s in range(len(SHAPES)):
        add(SHAPES[s], Spec(shape=s))
    return out


def held_out(spec: Spec) -> bool:
    """A fixed tenth of the complete prompts, never trained on."""
    if not spec.complete:
        return False
    s, c, h, p, b = spec.as_tuple()
    return (s * 7 + c * 13 + h * 5 + p * 3 + b * 11) % 10 == 0


def eval_prompts(n: int = 200, seed: int = 0) -> list[tuple[str, Spec]]:
    """`n` held-out complete prompts, chosen with `seed`: the adherence report's prompts."""
    pool = [(t, s) for t, s in prompt_table() if held_out(s)]
    return random.Random(seed).sample(pool, n)


def partial_prompts() -> list[tuple[str, Spec]]:
    """The prompts that say one attribute only ("a circle", "something green", "a shape on a red
    background"; not the bare words, which are there for negative prompts), in the table's order."""
    return [(t, s) for t, s in prompt_table() if sum(v >= 0 for v in s.as_tuple()) == 1 and " " in t]


def words() -> list[str]:
    """Every word the grammar uses (the tokenizers must know each as a whole)."""
    ws = {"a", "an", "something", "shape", "on", "background", *COLOURS, *SHAPES, *SIZES}
    for p in POSITION_PHRASES:
        ws.update(p.split())
    return sorted(ws)
