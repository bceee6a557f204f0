"""Drawing scenes: a batch of complete specs -> images, in torch (the CPU or a GPU, same code).

Geometry, in fractions of the image side: an object's half-extent is 0.08 / 0.12 / 0.16 (small,
medium, large); its centre sits in its grid cell (1/6, 1/2, 5/6 of the side) with a little jitter.
Edges are anti-aliased from each shape's signed distance. Triangles stand on their base.
"""

from __future__ import annotations

import torch

from .grammar import COLOURS, OBJECT_COLOURS, PALETTE, POSITIONS, SHAPES, SIZES

HALF_EXTENT = (0.08, 0.12, 0.16)
CELL_CENTRES = (1 / 6, 1 / 2, 5 / 6)
JITTER = 0.03


# What an unsaid size, position and background usually are (with `fill_unsaid`'s `usual`): a
# medium object in the centre on white, as a picture of "a red shape" usually is. White is no object's
# colour, so it never clashes.
USUAL = {0: SIZES.index("medium"), 3: POSITIONS.index("center"), 4: COLOURS.index("white")}


def fill_unsaid(attrs: torch.Tensor, gen: torch.Generator | None = None, usual: float = 0.0) -> torch.Tensor:
    """attrs (N, 5) with -1 where the prompt says nothing -> every attribute chosen; the object's
    colour never equals the background's. An unsaid colour or shape is drawn at random; an unsaid size,
    position or background is the usual one (`USUAL`) with probability `usual`, else at random."""
    attrs = attrs.clone()
    dev = attrs.device
    n = attrs.shape[0]

    def rand(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=gen, device=gen.device if gen else "cpu").to(dev)

    unsaid = attrs < 0
    for col, high in ((0, len(SIZES)), (1, len(OBJECT_COLOURS)), (2, len(SHAPES)), (3, len(POSITIONS))):
        attrs[:, col] = torch.where(unsaid[:, col], rand(high), attrs[:, col])
    # the background: any colour but the object's (shift past it)
    bg = rand(len(COLOURS) - 1)
    bg = bg + (bg >= attrs[:, 1]).long()
    attrs[:, 4] = torch.where(unsaid[:, 4], bg, attrs[:, 4])
    if usual > 0:
        # Why: with every unsaid attribute uniform, "a yellow shape" meant 648 scenes (size x shape x
        # place x background), and the tiny model's sampler committed to none: two objects where the
        # place was open, a yellow canvas (docs/QUALITY.md, "Prompts that say one thing").
        u = torch.rand(n, len(USUAL), generator=gen, device=gen.device if gen else "cpu").to(dev)
        for k, (col, value) in enumerate(USUAL.items()):
            attrs[:, col] = torch.where(unsaid[:, col] & (u[:, k] < usual), value, attrs[:, col])
    return attrs


def render(attrs: torch.Tensor, size: int = 256, gen: torch.Generator | None = None, jitter: bool = True,
           cover: bool = False):
    """Complete attrs (N, 5) -> images (N, 3, size, size) in [-1, 1]; with `cover`, also the object's
    coverage (N, 1, size, size) in [0, 1]."""
    dev = attrs.device
    n = attrs.shape[0]
    palette = torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float32, device=dev) / 127.5 - 1
    half = torch.tensor(HALF_EXTENT, device=dev)[attrs[:, 0]] * size
    centres = torch.tensor(CELL_CENTRES, device=dev)
    cy = centres[attrs[:, 3] // 3] * size
    cx = centres[attrs[:, 3] % 3] * size
    if jitter:
        j = (torch.rand(n, 2, generator=gen, device=gen.device if gen else "cpu").to(dev) * 2 - 1) * JITTER * size
        cx, cy = cx + j[:, 0], cy + j[:, 1]
    # keep the whole object inside the image
    cx = torch.minimum(torch.maximum(cx, half + 1), size - 1 - half)
    cy = torch.minimum(torch.maximum(cy, half + 1), size - 1 - half)
    coords = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    y = coords.view(1, size, 1) - cy.view(n, 1, 1)
    x = coords.view(1, 1, size) - cx.view(n, 1, 1)
    r = half.view(n, 1, 1)
    circle = torch.sqrt(x * x + y * y) - r
    square = torch.maximum(x.abs(), y.abs()) - r
    # upright triangle: apex (0, -r), base y = r from x = -r to r; sides' unit normals (+-2, -1)/sqrt(5)
    side = (2 * x.abs() - y - r) / 5 ** 0.5
    triangle = torch.maximum(side, y - r)
    sdf = torch.stack([circle, square, triangle], 1)[torch.arange(n, device=dev), attrs[:, 2]]
    cover_map = (0.5 - sdf).clamp(0, 1).unsqueeze(1)
    obj = palette[attrs[:, 1]].view(n, 3, 1, 1)
    bg = palette[attrs[:, 4]].view(n, 3, 1, 1)
    image = bg + (obj - bg) * cover_map
    return (image, cover_map) if cover else image


def to_pil(image: torch.Tensor):
    """One (3, H, W) image in [-1, 1] -> a PIL image."""
    from PIL import Image

    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)
