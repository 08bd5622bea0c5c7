"""Rendering CoverWorld covers: a genre motif on the genre palette, then a style (the part A/B tests vary).

A cover is `render_cover(genre, layout, style, size)`:
- `layout` is the item's own draw (motif position and scale, palette jitter): fixed per item;
- `style` moves what users care about — brightness, warmth, saturation, contrast and composition (a horizontal
  shift of the motif) — while the motif and palette stay recognisably the genre's.
The reference cover uses the neutral style; variants draw styles at random. Pure numpy, ~5k covers/s at 32 px.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np

from icg_rl.world.genres import Genre

MOTIFS = ("disc", "ring", "grid", "mountain", "dots", "cross", "diagonal", "stripes")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Layout:
    center_x: float  # motif centre, in [-1, 1] image units
    center_y: float
    scale: float  # motif size, share of the half-width
    jitter: tuple[float, float, float]  # RGB offset added to the palette


@dataclass(frozen=True)
class Style:
    brightness: float = 0.0  # added to every channel
    warmth: float = 0.0  # added to red, subtracted from blue
    saturation: float = 1.0  # chroma multiplier around the pixel's grey
    contrast: float = 1.0  # multiplier around the image's mean luminance
    shift: float = 0.0  # horizontal motif shift, image units

    def as_array(self) -> np.ndarray:
        return np.array(astuple(self), dtype=np.float32)


NEUTRAL = Style()


def draw_layout(rng: np.random.Generator) -> Layout:
    return Layout(
        center_x=float(rng.uniform(-0.3, 0.3)),
        center_y=float(rng.uniform(-0.25, 0.25)),
        scale=float(rng.uniform(0.45, 0.75)),
        jitter=tuple(float(v) for v in rng.normal(0.0, 0.04, size=3)),
    )


def draw_style(rng: np.random.Generator) -> Style:
    """A variant's style: wide enough that variants differ in every feature users care about."""
    return Style(
        brightness=float(rng.uniform(-0.18, 0.18)),
        warmth=float(rng.uniform(-0.18, 0.18)),
        saturation=float(rng.uniform(0.3, 1.5)),
        contrast=float(rng.uniform(0.6, 1.4)),
        shift=float(rng.uniform(-0.45, 0.45)),
    )


def motif_mask(motif: str, size: int, cx: float, cy: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(foreground mask, accent mask) in [0, 1], each (size, size)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")  # (size, size) each
    dx, dy = x - cx, y - cy
    r = np.sqrt(dx**2 + dy**2)
    s = scale
    if motif == "disc":
        fg, acc = r < s * 0.8, r < s * 0.25
    elif motif == "ring":
        fg, acc = (r < s * 0.85) & (r > s * 0.55), r < s * 0.2
    elif motif == "grid":
        inside = (np.abs(dx) < s) & (np.abs(dy) < s)
        fg = inside & ((np.mod(np.floor((dx + 4) / (s / 2)), 2) + np.mod(np.floor((dy + 4) / (s / 2)), 2)) == 1)
        acc = (np.abs(dx) < s * 0.15) & (np.abs(dy) < s * 0.15)
    elif motif == "mountain":
        fg = (dy > -s + 2.0 * np.abs(dx)) & (dy < s * 0.6)
        acc = (dy > -s + 2.0 * np.abs(dx)) & (dy < -s * 0.45)
    elif motif == "dots":
        fg = np.zeros_like(r, dtype=bool)
        for ox, oy in ((-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)):
            fg |= np.sqrt((dx - ox * s) ** 2 + (dy - oy * s) ** 2) < s * 0.28
        acc = r < s * 0.15
    elif motif == "cross":
        fg = ((np.abs(dx) < s * 0.22) & (np.abs(dy) < s)) | ((np.abs(dy) < s * 0.22) & (np.abs(dx) < s))
        acc = r < s * 0.18
    elif motif == "diagonal":
        fg = (np.abs(dx - dy) < s * 0.45) & (r < s * 1.3)
        acc = np.abs(dx + dy) < s * 0.08
    elif motif == "stripes":
        fg = (np.mod(np.floor((dy + 4) / (s * 0.4)), 2) == 0) & (np.abs(dx) < s * 1.4)
        acc = (r < s * 0.22)
    else:
        raise ValueError(f"motif: got {motif!r}; allowed {MOTIFS}")
    return fg.astype(np.float32), acc.astype(np.float32)


def apply_style(image: np.ndarray, style: Style) -> np.ndarray:
    """Pixel transforms of a style (shift is applied at draw time). image: (H, W, 3) float in [0, 1]."""
    grey = image @ LUMA  # (H, W)
    image = grey[..., None] + style.saturation * (image - grey[..., None])  # chroma scaled around grey
    mean = float((image @ LUMA).mean())
    image = mean + style.contrast * (image - mean)  # contrast around the mean luminance
    image = image + np.array([style.warmth, 0.0, -style.warmth], dtype=np.float32)
    image = image + style.brightness
    return np.clip(image, 0.0, 1.0)


def render_cover(genre: Genre, layout: Layout, style: Style, size: int) -> np.ndarray:
    """The cover as uint8 (size, size, 3)."""
    cx = float(np.clip(layout.center_x + style.shift, -0.85, 0.85))
    fg, acc = motif_mask(genre.motif, size, cx, layout.center_y, layout.scale)
    jitter = np.array(layout.jitter, dtype=np.float32)
    bg_color = np.clip(np.array(genre.background, dtype=np.float32) + jitter, 0.06, 0.94)  # room before clipping
    fg_color = np.clip(np.array(genre.foreground, dtype=np.float32) + jitter, 0.06, 0.94)
    acc_color = np.clip(np.array(genre.accent, dtype=np.float32), 0.06, 0.94)
    image = np.broadcast_to(bg_color, (size, size, 3)).copy()  # (size, size, 3)
    image = image * (1 - fg[..., None]) + fg_color * fg[..., None]
    image = image * (1 - acc[..., None]) + acc_color * acc[..., None]
    image = apply_style(image, style)
    return np.round(image * 255.0).astype(np.uint8)
