"""An embedded synthetic stand-in for Oxford-IIIT Pet, written in the official on-disk layout.

Each image holds one "animal" assembled from parts (body, head, ears, legs, tail) with a fur-like
texture, on a cluttered, textured background with distractor objects whose colours overlap the
animal's. Images have varied sizes and aspect ratios and are JPEG-compressed; trimaps use the
official coding (1 = pet, 2 = background, 3 = a boundary band a few pixels wide), so the loader
in :mod:`helpers.data.dataset` reads synthetic and real data through the same code.

The generator is deterministic: the same ``seed`` writes byte-identical files.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# (name, species) in the official naming convention: cats capitalised, dogs lower case
BREEDS = (
    ("Tabby", 1),
    ("Calico", 1),
    ("Shadow", 1),
    ("beagleoid", 2),
    ("spotted_hound", 2),
    ("fluffy_terrier", 2),
)
PALETTE = np.array(
    [  # fur and clutter share this palette on purpose: colour alone cannot segment
        (196, 140, 84),
        (120, 82, 48),
        (60, 50, 45),
        (225, 210, 185),
        (150, 150, 140),
        (90, 100, 60),
        (170, 120, 110),
        (240, 235, 225),
        (35, 32, 30),
        (130, 105, 80),
    ],
    dtype=np.float32,
)
_VERSION = 1  # bump when the drawing changes, so cached folders are regenerated


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1] of shape (h, w): random cells bilinearly enlarged."""
    gh, gw = max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w))
    grid = (rng.random((gh, gw)) * 255).astype(np.uint8)
    return (
        np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    )


def _fur(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A fur-like RGB texture (h, w, 3): base colour, patches, fine streaks along one direction."""
    base, patch = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
    patches = (_smooth_noise(rng, h, w, int(rng.integers(3, 8))) > rng.uniform(0.45, 0.75))[
        ..., None
    ]
    streak = rng.random((h, w)).astype(np.float32)
    angle = rng.uniform(0, 180)
    streak_img = Image.fromarray((streak * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(1))
    streak_img = streak_img.rotate(angle, resample=Image.BILINEAR).resize((w, h))
    # motion blur along the fur direction makes hair-like strands
    streak = np.asarray(streak_img.filter(ImageFilter.GaussianBlur(0.8)), np.float32) / 255.0
    rgb = np.where(patches, patch, base) * (0.75 + 0.5 * streak[..., None])
    return np.clip(rgb, 0, 255)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered background (h, w, 3): gradient, low-frequency texture, distractor shapes."""
    c0, c1 = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    rgb = c0 * (1 - t) + c1 * t
    rgb = rgb * (0.7 + 0.6 * _smooth_noise(rng, h, w, int(rng.integers(4, 16)))[..., None])
    canvas = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):  # furniture, toys, plants: same palette as the fur
        colour = tuple(int(v) for v in PALETTE[rng.integers(len(PALETTE))] * rng.uniform(0.7, 1.2))
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(10, w // 2 + 11), y0 + rng.integers(10, h // 2 + 11)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 9)))
    stripes = np.sin(np.arange(w, dtype=np.float32) * rng.uniform(0.05, 0.4))[None, :, None]
    rgb = np.asarray(canvas, np.float32) * (1 + 0.08 * stripes)
    return np.clip(rgb, 0, 255)


def _animal_mask(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Binary mask ('L', 0/255) of an animal built from body, head, ears, legs and tail."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    s = min(h, w) * rng.uniform(0.22, 0.34)  # body half-length
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.45, 0.65)
    bw, bh = s * rng.uniform(1.0, 1.5), s * rng.uniform(0.45, 0.7)
    facing = rng.choice((-1, 1))
    draw.ellipse((cx - bw, cy - bh, cx + bw, cy + bh), fill=255)
    leg_w = max(2, int(s * rng.uniform(0.12, 0.22)))  # legs: thin structures
    for fx in (-0.7, -0.35, 0.35, 0.7)[: int(rng.integers(2, 5))]:
        lx = cx + fx * bw
        draw.line(
            (lx, cy, lx + rng.uniform(-0.2, 0.2) * s, cy + bh + s * rng.uniform(0.5, 0.9)),
            fill=255,
            width=leg_w,
        )
    hx, hy, hr = (
        cx + facing * bw * 0.95,
        cy - bh * rng.uniform(0.6, 1.2),
        s * rng.uniform(0.45, 0.65),
    )
    draw.ellipse((hx - hr, hy - hr * 0.9, hx + hr, hy + hr * 0.9), fill=255)
    for side in (-1, 1):  # ears: pointed (cat) or floppy (dog)
        ex = hx + side * hr * 0.55
        tip = (ex + side * hr * rng.uniform(0.0, 0.3), hy - hr * rng.uniform(1.1, 1.6))
        draw.polygon(
            [(ex - hr * 0.3, hy - hr * 0.5), tip, (ex + hr * 0.3, hy - hr * 0.5)], fill=255
        )
    tail_w = max(2, int(s * rng.uniform(0.06, 0.14)))
    tx, ty = cx - facing * bw * 0.9, cy - bh * 0.2
    pts = [(tx, ty)]
    bend = rng.uniform(-1.2, 1.2)
    for k in range(1, 6):  # a curved tail as a polyline
        a = (
            math.radians(-90 + bend * 25 * k)
            if rng.random() < 0.5
            else math.radians(200 - bend * 20 * k)
        )
        tx, ty = tx - facing * s * 0.22 * abs(math.cos(a)), ty + s * 0.22 * math.sin(a)
        pts.append((tx, ty))
    draw.line(pts, fill=255, width=tail_w, joint="curve")
    return mask


def trimap_from_mask(mask: np.ndarray, band: int) -> np.ndarray:
    """Official trimap coding from a binary mask (H, W) bool: 1 pet, 2 background, 3 a band of
    ``band`` pixels on either side of the outline (where real annotators mark uncertainty)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    size = 2 * band + 1
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(size))) > 127
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(size))) > 127
    trimap = np.full(mask.shape, 2, np.uint8)
    trimap[mask] = 1
    trimap[grown & ~shrunk] = 3
    return trimap


def render_sample(seed: int, index: int) -> tuple[Image.Image, np.ndarray]:
    """One synthetic (RGB image, trimap) pair; the same (seed, index) always gives the same pair."""
    rng = np.random.default_rng([seed, index, _VERSION])
    w, h = int(rng.integers(180, 420)), int(rng.integers(150, 380))  # varied aspect ratios
    mask_img = _animal_mask(rng, h, w)
    # a soft matte: fur edges blend into the background as in real photos
    alpha = (
        np.asarray(mask_img.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.6))), np.float32)[
            ..., None
        ]
        / 255
    )
    rgb = _fur(rng, h, w) * alpha + _background(rng, h, w) * (1 - alpha)
    shade = 0.85 + 0.3 * _smooth_noise(rng, h, w, 3)[..., None]  # uneven lighting
    rgb = np.clip(rgb * shade + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
    trimap = trimap_from_mask(np.asarray(mask_img) > 127, band=int(rng.integers(1, 4)))
    return Image.fromarray(rgb), trimap


def write_synthetic_dataset(
    root: str | Path, n_trainval: int, n_test: int, seed: int = 0, progress: bool = True
) -> Path:
    """Write ``root/oxford-iiit-pet`` in the official layout and return ``root``.

    Layout: ``images/<Name>_<i>.jpg``, ``annotations/trimaps/<Name>_<i>.png``, and the lists
    ``annotations/{list,trainval,test}.txt`` with lines ``<Name>_<i> <class> <species> <breed>``.
    Written to a temporary folder first and renamed, so an interrupted run leaves nothing half-made.
    """
    from ..core.progress import bar

    root = Path(root)
    final = root / "oxford-iiit-pet"
    if (final / "annotations" / "test.txt").exists():
        return root
    # a name no other writer uses: two processes generating at once must not share a half-written
    # folder
    tmp = root / f".oxford-iiit-pet.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    (tmp / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    lines = []
    total = n_trainval + n_test
    for i in bar(range(total), progress, desc="writing synthetic pets", leave=False):
        breed = i % len(BREEDS)
        name, species = BREEDS[breed]
        image_id = f"{name}_{i // len(BREEDS) + 1}"
        image, trimap = render_sample(seed, i)
        image.save(tmp / "images" / f"{image_id}.jpg", quality=int(75 + (i % 4) * 5))
        Image.fromarray(trimap).save(tmp / "annotations" / "trimaps" / f"{image_id}.png")
        per_species = sum(1 for b in BREEDS[:breed] if b[1] == species)
        lines.append(f"{image_id} {breed + 1} {species} {per_species + 1}")
    header = (
        "#Image CLASS-ID SPECIES BREED ID\n#synthetic stand-in written by helpers.data.synthetic\n"
    )
    ann = tmp / "annotations"
    (ann / "list.txt").write_text(header + "\n".join(lines) + "\n")
    (ann / "trainval.txt").write_text("\n".join(lines[:n_trainval]) + "\n")
    (ann / "test.txt").write_text("\n".join(lines[n_trainval:]) + "\n")
    root.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(final)
    except OSError:
        if not (final / "annotations" / "test.txt").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same dataset first
    return root
