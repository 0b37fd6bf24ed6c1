"""Procedurally drawn hands in the exact 11k Hands layout and CSV format.

An identity fixes the hand's shape (palm size, finger lengths and widths, thumb angle),
its skin tone, a skin texture and a set of marks (moles, scars), and the attributes of
HandInfo.csv, each of which is drawn so that it shows:

- ``gender``: men's hands are larger, with a broader palm and wider fingers;
- ``age``: wrinkle lines over the knuckles and age spots grow with the age band
  (young < 30, middle-aged < 50, older);
- ``skinColor``: the base tone (very fair, fair, medium, dark);
- ``nailPolish``: the identity's polish colour fills the fingertips of dorsal views;
- ``accessories`` (per image): a gold or silver ring on the ring finger.

Each image then draws a pose (rotation, finger spread, translation, scale), lighting, a
background and a blur from its own random stream, so the labels depend on the seed only.
Left hands are mirror images; palmar views are lighter with palm creases, dorsal views
show knuckles and nails. The identity cues are small against the per-image variation,
so raw pixels retrieve poorly while a trained model can learn them. :func:`caption`
describes a rendered image in words (for contrastive pretraining of the tiny CLIPs).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from handreid.data.hands11k import ASPECT_NAMES, COLUMNS, CSV_NAME, IMAGE_DIR

# Bumped whenever the drawing changes: part of the cache key of generated datasets, so a
# dataset cached by an older renderer is never read as this one's.
RENDER_VERSION = 3
# Written beside HandInfo.csv: the dataset is generated, and the split it is meant for (its
# ids do not follow 11k's numbering, so the standard threshold split leaves no test ids).
MARKER = "synth.json"

SKIN_TONES = {
    "very fair": (236, 200, 180),
    "fair": (224, 182, 150),
    "medium": (198, 146, 108),
    "dark": (141, 93, 62),
}
NAIL_COLOURS = ((200, 30, 60), (230, 80, 160), (120, 30, 130), (150, 10, 20), (240, 110, 70))
RING_COLOURS = ((235, 190, 40), (215, 215, 230))  # gold, silver
AGE_BANDS = ((30, "young"), (50, "middle-aged"), (200, "older"))  # (upper bound, name)
# How often each attribute value occurs among HandInfo.csv's 189 identities (its first row per
# id): identities are drawn with these odds, so the attributes single out an identity about as
# rarely as in 11k (most are young women of medium or fair skin) and the rest of the hand --
# finger lengths, marks, palm shape -- has to do the work.
SKIN_ODDS = {"medium": 110, "fair": 60, "dark": 14, "very fair": 5}
GENDER_ODDS = {"female": 128, "male": 61}
AGE_ODDS = {(18, 30): 183, (30, 50): 3, (50, 76): 3}  # [low, high) years: HandInfo's 18-75
NAIL_POLISH_ODDS = 33 / 189  # identities with nail polish on some image

GENDER_SHAPE = {  # palm width, palm height, finger width, hand size
    "male": (1.12, 1.06, 1.18, 1.08),
    "female": (0.9, 0.96, 0.84, 0.92),
}


def age_band(age: int) -> str:
    return next(name for upper, name in AGE_BANDS if age < upper)


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
    nail_colour: tuple[int, int, int] = (200, 30, 60)
    size: float = 1.0  # overall hand size (gender)
    wrinkles: int = 0  # knuckle wrinkle lines per finger (age)
    age_spots: np.ndarray | None = None  # (n, 3): x, y in palm coords, radius (age)


def _pick(rng: np.random.Generator, odds: dict):
    keys = list(odds)
    weights = np.array([odds[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


def draw_identity(rng: np.random.Generator, pid: str) -> Identity:
    skin_name = _pick(rng, SKIN_ODDS)
    skin = np.array(SKIN_TONES[skin_name], float) * rng.uniform(0.93, 1.07) + rng.normal(0, 5, 3)
    gender = _pick(rng, GENDER_ODDS)
    age = int(rng.integers(*_pick(rng, AGE_ODDS)))
    sw, sh, sf, size = GENDER_SHAPE[gender]
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
    band = [name for _, name in AGE_BANDS].index(age_band(age))
    n_spots = (0, 1, 4)[band] + int(rng.integers(0, 2)) * band
    spots = np.column_stack(
        [
            rng.uniform(-0.8, 0.8, n_spots),
            rng.uniform(-0.8, 0.9, n_spots),
            rng.uniform(0.07, 0.11, n_spots),
        ]
    )
    nail_polish = int(rng.random() < NAIL_POLISH_ODDS)
    return Identity(
        pid=pid,
        age=age,
        gender=gender,
        skin_name=skin_name,
        skin=np.clip(skin, 30, 250),
        palm_w=float(rng.uniform(0.9, 1.1) * sw),
        palm_h=float(rng.uniform(0.9, 1.1) * sh),
        finger_len=rng.uniform(0.55, 0.95, 5) * np.array([0.7, 0.95, 1.05, 1.0, 0.8]),
        finger_w=rng.uniform(0.16, 0.22, 5) * sf,
        thumb_angle=float(rng.uniform(30, 60)),
        marks=marks,
        stripes=stripes,
        nail_polish=nail_polish,
        nail_colour=NAIL_COLOURS[int(rng.integers(len(NAIL_COLOURS)))],
        size=size * float(rng.uniform(0.96, 1.04)),
        wrinkles=band,
        age_spots=spots,
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


def _shade(colour, factor: float) -> tuple[int, ...]:
    return tuple(int(c) for c in np.clip(np.asarray(colour, float) * factor, 0, 255))


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

    ring_colour = RING_COLOURS[int(rng.integers(len(RING_COLOURS)))]  # drawn either way
    palmar = aspect.startswith("palmar")
    tone = ident.skin * (1.12 if palmar else 1.0)
    light = rng.uniform(0.8, 1.15)
    skin = tuple(int(c) for c in np.clip(tone * light + rng.normal(0, 5, 3), 0, 255))
    dark = _shade(skin, 0.72)

    unit = canvas[1] * 0.28 * ident.size * rng.uniform(0.9, 1.08)  # pixels per hand unit
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

    def dot(pos: np.ndarray, radius: float, **kw) -> None:
        draw.ellipse(_box(to_px(pos[None])[0], radius * unit), **kw)

    pw, ph = ident.palm_w, ident.palm_h
    # wrist, then the palm
    wrist = np.array(
        [[-0.42 * pw, -0.3 * ph], [0.42 * pw, -0.3 * ph], [0.4 * pw, -1.6], [-0.4 * pw, -1.6]]
    )
    draw.polygon(to_px(wrist), fill=skin)
    t = np.linspace(0, 2 * math.pi, 28)
    palm = np.column_stack([pw * 0.55 * np.cos(t), ph * 0.6 * np.sin(t)])
    draw.polygon(to_px(palm), fill=skin)
    # four fingers and the thumb
    bases_x = np.linspace(-0.4, 0.4, 4) * pw
    for j in range(4):
        base = np.array([bases_x[j], ph * 0.45])
        fang = (j - 1.5) * -8 * spread
        length, fw = ident.finger_len[j + 1] * ph, ident.finger_w[j + 1] * pw
        draw.polygon(to_px(_finger_polygon(base, fang, length, fw)), fill=skin)
        if palmar:
            continue
        # nail (polish fills the whole fingertip), knuckle and the age's wrinkle lines
        tip = base + _rot(np.array([[0, length * 0.86]]), fang)[0]
        if ident.nail_polish:
            dot(tip, fw * 0.55, fill=ident.nail_colour)
        else:
            dot(tip, fw * 0.32, fill=tuple(min(255, c + 30) for c in skin))
        knuckle = base + _rot(np.array([[0, length * 0.45]]), fang)[0]
        for w in range(ident.wrinkles):
            off = _rot(
                np.array([[-fw * 0.4, (w - 0.5) * 0.06], [fw * 0.4, (w - 0.5) * 0.06]]), fang
            )
            draw.line(to_px(knuckle + off), fill=dark, width=ss)
        dot(base + _rot(np.array([[0, 0.05]]), fang)[0], fw * 0.22, outline=dark, width=ss)
    thumb_base = np.array([pw * 0.5, -ph * 0.05])
    thumb = _finger_polygon(
        thumb_base,
        -ident.thumb_angle * spread,
        ident.finger_len[0] * ph,
        ident.finger_w[0] * pw * 1.2,
    )
    draw.polygon(to_px(thumb), fill=skin)
    if accessory:  # a ring on the ring finger: a bright band across it
        fang = -0.5 * -8 * spread
        ring = (
            np.array([bases_x[2], ph * 0.45])
            + _rot(np.array([[0, ident.finger_len[3] * ph * 0.3]]), fang)[0]
        )
        dot(ring, ident.finger_w[3] * pw * 0.9, fill=ring_colour, outline=_shade(ring_colour, 0.6))
    # texture: creases (palmar) or veins (dorsal), identity-specific
    for y, tilt, strength in ident.stripes:
        line = np.array(
            [[-0.45 * pw, y * ph * 0.5 + tilt * 0.2], [0.45 * pw, y * ph * 0.5 - tilt * 0.2]]
        )
        col = _shade(skin, 1 - strength * (1.0 if palmar else 0.6))
        draw.line(to_px(line), fill=col, width=max(1, int(unit * 0.03)))
    # marks: moles and scars, visible on the dorsal side, fainter on the palm; age spots
    for x, y, r, darkness in ident.marks:
        pos = np.array([x * pw * 0.5, y * ph * 0.5])
        dot(pos, r * 0.6, fill=_shade(skin, 1 - darkness * (0.5 if palmar else 1.0)))
    if not palmar and ident.age_spots is not None:
        for x, y, r in ident.age_spots:
            dot(np.array([x * pw * 0.5, y * ph * 0.5]), r, fill=_shade(skin, 0.8))

    img = img.resize((width, height), Image.BILINEAR)
    blur = rng.uniform(0, 0.8)
    if blur > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, 4, arr.shape)  # sensor noise
    gradient = np.linspace(rng.uniform(-25, 0), rng.uniform(0, 25), width)[None, :, None]
    return Image.fromarray(np.clip(arr + gradient, 0, 255).astype(np.uint8))


def _box(center: tuple[float, float], r: float) -> list[float]:
    return [center[0] - r, center[1] - r, center[0] + r, center[1] + r]


def caption(row: dict) -> str:
    """A sentence for a rendered image from its HandInfo.csv row (``id``, ``age``,
    ``gender``, ``skinColor``, ``accessories``, ``nailPolish``, ``aspectOfHand``). Nails
    are drawn on dorsal views only, so palmar captions leave them out."""
    person = {"male": "man", "female": "woman"}[row["gender"]]
    band = age_band(int(row["age"]))
    text = f"{row['aspectOfHand']} hand of {'an' if band == 'older' else 'a'} {band} {person}"
    text += f", {row['skinColor']} skin"
    text += ", a ring" if int(row["accessories"]) else ", no ring"
    if row["aspectOfHand"].startswith("dorsal"):
        text += ", nail polish" if int(row["nailPolish"]) else ", bare nails"
    return text + "."


@dataclass
class Hand:
    """One generated image and its HandInfo.csv row (without the file name)."""

    image: Image.Image
    ident: Identity
    aspect: str
    accessory: bool

    def row(self, name: str = "") -> dict:
        values = [
            self.ident.pid,
            self.ident.age,
            self.ident.gender,
            self.ident.skin_name,
            int(self.accessory),
            self.ident.nail_polish,
            ASPECT_NAMES[self.aspect],
            name,
            0,
        ]
        return dict(zip(COLUMNS, values))


def hands(
    *,
    ids: int,
    per_id: int,
    aspects: tuple[str, ...] = ("dorsal_r",),
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
    accessory_rate: float = 0.05,
    first_id: int = 0,
    stream: int = 0,
) -> Iterator[Hand]:
    """The images of ``ids`` identities (ids ``first_id ...``), ``per_id`` per aspect, in
    order. Identities and labels come from ``seed`` (and ``stream``: a nonzero stream is a
    separate family of identities, e.g. for pretraining); each image is rendered from its
    own generator, so changes to the drawing never change the labels."""
    key = np.random.SeedSequence(seed, spawn_key=(stream,) if stream else ())
    rng = np.random.default_rng(key)
    identities = [draw_identity(rng, f"{first_id + i:07d}") for i in range(ids)]
    for ident in identities:
        for aspect in aspects:
            for _ in range(per_id):
                accessory = bool(rng.random() < accessory_rate)
                image_rng = np.random.default_rng(rng.integers(2**63))
                yield Hand(
                    render(ident, aspect, size, image_rng, accessory), ident, aspect, accessory
                )


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
    """Write ``<out>/HandInfo.csv``, ``<out>/Hands/Hand_*.jpg`` and ``<out>/synth.json``;
    returns ``out``."""
    out = Path(out)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    drawn = hands(
        ids=ids,
        per_id=per_id,
        aspects=aspects,
        size=size,
        seed=seed,
        accessory_rate=accessory_rate,
        first_id=first_id,
    )
    for counter, hand in enumerate(drawn, 1):
        name = f"Hand_{counter:07d}.jpg"
        hand.image.save(out / IMAGE_DIR / name, quality=90)
        rows.append(list(hand.row(name).values()))
    tmp = out / (CSV_NAME + ".tmp")
    with tmp.open("w", newline="") as fh:
        fh.write(",".join(COLUMNS) + "\n")  # the real header is unquoted, the values quoted
        csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC).writerows(rows)
    tmp.replace(out / CSV_NAME)
    write_marker(
        out,
        ids=ids,
        per_id=per_id,
        aspects=list(aspects),
        size=list(size),
        seed=seed,
        accessory_rate=accessory_rate,
        first_id=first_id,
        render_version=RENDER_VERSION,
    )
    return out


def write_marker(out: str | Path, **described) -> None:
    """``<out>/synth.json``: marks a generated dataset and its intended split (random)."""
    doc = {"synthetic": True, "split": "random", **described}
    (Path(out) / MARKER).write_text(json.dumps(doc, indent=2) + "\n")
