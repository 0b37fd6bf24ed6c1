"""Procedurally drawn hands in the exact 11k Hands layout and CSV format.

An identity fixes the hand's shape (palm size, finger lengths and widths, thumb angle),
its skin tone, a skin texture and a set of marks (moles, scars). Each image then draws a
pose (rotation, finger spread, translation, scale), lighting, a background and a blur.
Left hands are mirror images; palmar views are lighter with palm creases, dorsal views
show knuckles and nails. The identity cues are small against the per-image variation,
so raw pixels retrieve poorly while a trained model can learn them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from handreid.data.hands11k import ASPECT_NAMES, COLUMNS, CSV_NAME, IMAGE_DIR

SKIN_TONES = {
    "very fair": (236, 200, 180),
    "fair": (224, 182, 150),
    "medium": (198, 146, 108),
    "dark": (141, 93, 62),
}


@dataclass
class Identity:
    pid: str
    age: int
    gender: str
    skin_name: str
    skin: np.ndarray  # RGB
    palm_w: float
    palm_h: float
    finger_len: np.ndarray  # 5, relative to palm height
    finger_w: np.ndarray  # 5, relative to palm width
    thumb_angle: float
    marks: np.ndarray  # (n, 4): x, y in palm coords [-1, 1], radius, darkness
    stripes: np.ndarray  # (n, 3): texture lines y, tilt, strength
    nail_polish: int


def draw_identity(rng: np.random.Generator, pid: str) -> Identity:
    skin_name = str(rng.choice(list(SKIN_TONES)))
    skin = np.array(SKIN_TONES[skin_name], float) + rng.normal(0, 16, 3)
    n_marks = int(rng.integers(2, 6))
    marks = np.column_stack(
        [
            rng.uniform(-0.8, 0.8, n_marks),
            rng.uniform(-0.9, 1.4, n_marks),
            rng.uniform(0.08, 0.16, n_marks),
            rng.uniform(0.35, 0.7, n_marks),
        ]
    )
    stripes = np.column_stack(
        [rng.uniform(-0.8, 0.8, 3), rng.uniform(-0.4, 0.4, 3), rng.uniform(0.1, 0.3, 3)]
    )
    return Identity(
        pid=pid,
        age=int(rng.integers(18, 75)),
        gender=str(rng.choice(["male", "female"])),
        skin_name=skin_name,
        skin=np.clip(skin, 30, 250),
        palm_w=float(rng.uniform(0.8, 1.2)),
        palm_h=float(rng.uniform(0.85, 1.15)),
        finger_len=rng.uniform(0.55, 0.95, 5) * np.array([0.7, 0.95, 1.05, 1.0, 0.8]),
        finger_w=rng.uniform(0.16, 0.24, 5),
        thumb_angle=float(rng.uniform(30, 60)),
        marks=marks,
        stripes=stripes,
        nail_polish=int(rng.random() < 0.15),
    )


def _rot(points: np.ndarray, angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return points @ r.T


def _finger_polygon(base: np.ndarray, angle: float, length: float, width: float) -> np.ndarray:
    """A rounded finger as a polygon (hand units), pointing up when angle = 0."""
    t = np.linspace(0, math.pi, 9)
    tip = np.column_stack([width / 2 * np.cos(t), length + width / 2 * np.sin(t)])
    outline = np.vstack([[width / 2, 0], tip, [-width / 2, 0]])
    return base + _rot(outline, angle)


def render(
    ident: Identity,
    aspect: str,
    size: tuple[int, int],
    rng: np.random.Generator,
    accessory: bool = False,
) -> Image.Image:
    width, height = size
    ss = 2  # supersample, then downscale for anti-aliasing
    canvas = (width * ss, height * ss)
    bg = rng.uniform(175, 250) + rng.normal(0, 8, 3)  # 11k hands lie on a light, plain ground
    img = Image.new("RGB", canvas, tuple(int(c) for c in np.clip(bg, 0, 255)))
    draw = ImageDraw.Draw(img)
    # background clutter: a few faint blobs
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, canvas[0]), rng.uniform(0, canvas[1])
        r = rng.uniform(0.05, 0.3) * canvas[1]
        col = tuple(int(c) for c in np.clip(bg + rng.normal(0, 25, 3), 0, 255))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)

    palmar = aspect.startswith("palmar")
    tone = ident.skin * (1.12 if palmar else 1.0)
    light = rng.uniform(0.75, 1.2)
    skin = tuple(int(c) for c in np.clip(tone * light + rng.normal(0, 6, 3), 0, 255))
    dark = tuple(int(c) for c in np.clip(np.array(skin) * 0.72, 0, 255))

    unit = canvas[1] * 0.3 * rng.uniform(0.85, 1.1)  # pixels per hand unit
    center = np.array([canvas[0] / 2, canvas[1] * 0.62]) + rng.normal(0, 0.04, 2) * canvas
    angle = rng.normal(0, 10)
    spread = rng.uniform(0.6, 1.4)
    mirror = aspect.endswith("_l")

    def to_px(pts: np.ndarray) -> list[tuple[float, float]]:
        pts = pts.copy()
        if mirror:
            pts[:, 0] = -pts[:, 0]
        pts = _rot(pts, angle) * unit
        pts[:, 1] = -pts[:, 1]
        pts += center
        return [tuple(p) for p in pts]

    pw, ph = ident.palm_w, ident.palm_h
    # palm
    t = np.linspace(0, 2 * math.pi, 28)
    palm = np.column_stack([pw * 0.55 * np.cos(t), ph * 0.6 * np.sin(t)])
    draw.polygon(to_px(palm), fill=skin)
    # four fingers and the thumb
    bases_x = np.linspace(-0.4, 0.4, 4) * pw
    for j in range(4):
        base = np.array([bases_x[j], ph * 0.45])
        fang = (j - 1.5) * -8 * spread
        finger = _finger_polygon(
            base, fang, ident.finger_len[j + 1] * ph, ident.finger_w[j + 1] * pw
        )
        draw.polygon(to_px(finger), fill=skin)
        if not palmar:  # knuckle line and nail
            tip = base + _rot(np.array([[0, ident.finger_len[j + 1] * ph * 0.82]]), fang)[0]
            nail_col = (200, 40, 80) if ident.nail_polish else tuple(min(255, c + 25) for c in skin)
            r = ident.finger_w[j + 1] * pw * 0.28
            draw.ellipse(_box(to_px(tip[None])[0], r * unit), fill=nail_col)
            knuckle = base + _rot(np.array([[0, 0.05]]), fang)[0]
            draw.ellipse(_box(to_px(knuckle[None])[0], r * unit * 0.8), outline=dark, width=ss)
    thumb_base = np.array([pw * 0.5, -ph * 0.05])
    thumb = _finger_polygon(
        thumb_base,
        -ident.thumb_angle * spread,
        ident.finger_len[0] * ph,
        ident.finger_w[0] * pw * 1.2,
    )
    draw.polygon(to_px(thumb), fill=skin)
    if accessory:  # a ring on the ring finger
        ring = np.array([bases_x[2], ph * 0.45 + ident.finger_len[3] * ph * 0.25])
        draw.ellipse(_box(to_px(ring[None])[0], 0.12 * unit), outline=(212, 175, 55), width=2 * ss)
    # texture: creases (palmar) or veins (dorsal), identity-specific
    for y, tilt, strength in ident.stripes:
        line = np.array(
            [[-0.45 * pw, y * ph * 0.5 + tilt * 0.2], [0.45 * pw, y * ph * 0.5 - tilt * 0.2]]
        )
        col = tuple(int(c) for c in np.array(skin) * (1 - strength * (1.0 if palmar else 0.6)))
        draw.line(to_px(line), fill=col, width=max(1, int(unit * 0.03)))
    # marks: moles and scars, visible on the dorsal side, fainter on the palm
    for x, y, r, darkness in ident.marks:
        pos = np.array([[x * pw * 0.5, y * ph * 0.5]])
        shade = 1 - darkness * (0.5 if palmar else 1.0)
        col = tuple(int(c * shade) for c in skin)
        draw.ellipse(_box(to_px(pos)[0], r * unit * 0.6), fill=col)

    img = img.resize((width, height), Image.BILINEAR)
    blur = rng.uniform(0, 0.9)
    if blur > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, 4, arr.shape)  # sensor noise
    gradient = np.linspace(rng.uniform(-25, 0), rng.uniform(0, 25), width)[None, :, None]
    return Image.fromarray(np.clip(arr + gradient, 0, 255).astype(np.uint8))


def _box(center: tuple[float, float], r: float) -> list[float]:
    return [center[0] - r, center[1] - r, center[0] + r, center[1] + r]


def generate(
    out: str | Path,
    *,
    ids: int = 100,
    per_id: int = 10,
    aspects: tuple[str, ...] = ("dorsal_r",),
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    accessory_rate: float = 0.05,
    first_id: int = 0,
) -> Path:
    """Write ``<out>/HandInfo.csv`` and ``<out>/Hands/Hand_*.jpg``; returns ``out``."""
    out = Path(out)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    identities = [draw_identity(rng, f"{first_id + i:07d}") for i in range(ids)]
    rows = []
    counter = 0
    for ident in identities:
        for aspect in aspects:
            for _ in range(per_id):
                counter += 1
                accessory = bool(rng.random() < accessory_rate)
                name = f"Hand_{counter:07d}.jpg"
                img = render(ident, aspect, size, rng, accessory)
                img.save(out / IMAGE_DIR / name, quality=90)
                rows.append(
                    [
                        ident.pid,
                        ident.age,
                        ident.gender,
                        ident.skin_name,
                        int(accessory),
                        ident.nail_polish,
                        ASPECT_NAMES[aspect],
                        name,
                        0,
                    ]
                )
    tmp = out / (CSV_NAME + ".tmp")
    with tmp.open("w", newline="") as fh:
        fh.write(",".join(COLUMNS) + "\n")  # the real header is unquoted, the values quoted
        csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC).writerows(rows)
    tmp.replace(out / CSV_NAME)
    return out
