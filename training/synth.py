"""Procedural street scenes in the Cityscapes layout, for tests and the demo.

Every scene is rendered with an exact pinhole camera over a flat ground plane, so the label map
is exact by construction: each pixel's class is decided from the 3-D surface it sees (ground
band, facade plane, object sprite), and the image is painted from the same decision. Scenes are
deterministic functions of ``(seed, split, index)``.

The generator is **not** a substitute for Cityscapes: the world is flat, textures are simple and
only a subset of the 19 classes appears. It exists so that tests and the demo can train and
evaluate for real without any download.

Output layout (the official one, so the Cityscapes loader reads it unchanged)::

    OUT/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    OUT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    OUT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_color.png   (optional)

or, with ``--layout camvid-segnet`` (:func:`write_segnet_camvid`), CamVid's SegNet layout with the
classes mapped to CamVid's 11, the input of ``python -m training prepare camvid``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Cityscapes *labelIds* (not trainIds) of the surfaces the generator paints. The dataset loader
# maps them to trainIds with the official table, exactly as it does for real gtFine files.
UNLABELED, EGO = 0, 1
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, BICYCLE = 24, 25, 26, 27, 28, 33

SPLITS = {"train": 0, "val": 1, "test": 2}
CITY = "synth"

# Colours of the labelIds in the official Cityscapes palette, for the *_gtFine_color.png files.
_COLOR_RGB = {
    ROAD: (128, 64, 128), SIDEWALK: (244, 35, 232), BUILDING: (70, 70, 70), WALL: (102, 102, 156),
    FENCE: (190, 153, 153), POLE: (153, 153, 153), TRAFFIC_LIGHT: (250, 170, 30),
    TRAFFIC_SIGN: (220, 220, 0), VEGETATION: (107, 142, 35), TERRAIN: (152, 251, 152),
    SKY: (70, 130, 180), PERSON: (220, 20, 60), RIDER: (255, 0, 0), CAR: (0, 0, 142),
    TRUCK: (0, 0, 70), BUS: (0, 60, 100), BICYCLE: (119, 11, 32), EGO: (0, 0, 0),
}


@dataclass
class _Camera:
    """Pinhole camera at height ``h`` metres above a flat ground, looking along +Z.

    A world point (X right, Y up, Z forward) projects to ``x = cx + f X / Z`` and
    ``y = cy + f (h - Y) / Z``; ``cy`` is the horizon row.
    """

    f: float
    cx: float
    cy: float
    h: float

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.cx + self.f * x / z, self.cy + self.f * (self.h - y) / z


def _jitter_color(rng: np.random.Generator, base: tuple[int, int, int], amount: int) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.integers(-amount, amount + 1, 3), 0, 255)


def _paint(img: np.ndarray, lab: np.ndarray, mask: np.ndarray, color: np.ndarray | tuple,
           label: int) -> None:
    """Paint ``color`` (RGB, float) into ``img`` and ``label`` into ``lab`` where ``mask`` is set."""
    img[mask] = color
    lab[mask] = label


def _fill_poly(img: np.ndarray, lab: np.ndarray, pts: np.ndarray, color, label: int) -> None:
    """Fill a polygon (K x 2 float pixel coordinates) in both image and label map."""
    p = np.round(np.asarray(pts, np.float64) * 4).astype(np.int32)  # 2 bits of sub-pixel precision
    cv2.fillPoly(img, [p], tuple(float(c) for c in color), lineType=cv2.LINE_8, shift=2)
    cv2.fillPoly(lab, [p], int(label), lineType=cv2.LINE_8, shift=2)


def _fill_ellipse(img: np.ndarray, lab: np.ndarray, center, axes, color, label: int) -> None:
    c = (int(round(center[0] * 4)), int(round(center[1] * 4)))
    a = (max(1, int(round(axes[0] * 4))), max(1, int(round(axes[1] * 4))))
    cv2.ellipse(img, c, a, 0, 0, 360, tuple(float(v) for v in color), -1, cv2.LINE_8, 2)
    cv2.ellipse(lab, c, a, 0, 0, 360, int(label), -1, cv2.LINE_8, 2)


def _box(cam: _Camera, x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """The image quad of the upright rectangle [x0, x1] x [y0, y1] at depth z (world metres)."""
    a = cam.project(x0, y1, z)
    b = cam.project(x1, y0, z)
    return np.array([[a[0], a[1]], [b[0], a[1]], [b[0], b[1]], [a[0], b[1]]])


# --------------------------------------------------------------------------------------------
# Scene parts
# --------------------------------------------------------------------------------------------

def _sky(rng: np.random.Generator, img: np.ndarray, lab: np.ndarray) -> None:
    h, w = lab.shape
    overcast = rng.random() < 0.35
    if overcast:
        top = _jitter_color(rng, (175, 180, 190), 20)
        bottom = np.clip(top + 25, 0, 255)
    else:
        top = _jitter_color(rng, (70, 125, 205), 25)
        bottom = _jitter_color(rng, (180, 205, 235), 15)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img[:] = top * (1 - t) + bottom * t
    lab[:] = SKY
    # A few soft clouds: still sky in the label map.
    for _ in range(int(rng.integers(0, 5))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h * 0.35)
        ax, ay = rng.uniform(w * 0.05, w * 0.2), rng.uniform(h * 0.02, h * 0.06)
        cloud = np.zeros((h, w), np.uint8)
        cv2.ellipse(cloud, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 255, -1)
        cloud = cv2.GaussianBlur(cloud, (0, 0), max(1.0, ay * 0.6)).astype(np.float32)[..., None] / 255
        img[:] = img * (1 - 0.6 * cloud) + 245 * 0.6 * cloud


@dataclass
class _Street:
    """Lateral layout of the street in metres (X = 0 is the camera)."""

    road_l: float
    road_r: float
    walk_l: float       # outer edge of the left sidewalk (< road_l)
    walk_r: float       # outer edge of the right sidewalk (> road_r)
    lanes: list[float]  # X of the lane lines (dashed)
    curb_l: bool
    curb_r: bool


def _ground(rng: np.random.Generator, cam: _Camera, img: np.ndarray, lab: np.ndarray,
            st: _Street) -> tuple[np.ndarray, np.ndarray]:
    """Paint road, sidewalks, terrain and lane markings per pixel; return the ground X, Z maps."""
    h, w = lab.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    below = ys > cam.cy + 0.5
    z = np.where(below, cam.f * cam.h / np.maximum(ys + 0.5 - cam.cy, 1e-3), np.inf)
    x = (xs + 0.5 - cam.cx) * z / cam.f
    noise = rng.normal(0, 1, (h, w)).astype(np.float32)
    fine = cv2.GaussianBlur(noise, (0, 0), 0.7)

    road = below & (x >= st.road_l) & (x <= st.road_r)
    walk = below & ~road & (x >= st.walk_l) & (x <= st.walk_r)
    terr = below & ~road & ~walk

    asphalt = _jitter_color(rng, (95, 95, 100), 20)
    img[road] = asphalt + 9 * fine[road][:, None]
    lab[road] = ROAD
    # Lane markings: dashed lines, 12 cm wide, 3 m painted every 9 m (still labelled road).
    dash, period = rng.uniform(2.5, 4.0), rng.uniform(7.0, 10.0)
    paint = _jitter_color(rng, (225, 225, 215), 10)
    for lx in st.lanes:
        m = road & (np.abs(x - lx) < 0.07) & (np.mod(z + rng.uniform(0, period), period) < dash)
        img[m] = paint
    # Edge lines (solid) sometimes.
    if rng.random() < 0.5:
        for ex in (st.road_l + 0.3, st.road_r - 0.3):
            img[road & (np.abs(x - ex) < 0.07)] = paint

    stone = _jitter_color(rng, (160, 150, 150), 25)
    tile = rng.uniform(0.4, 0.8)
    grid = (np.mod(z, tile) < 0.04) | (np.mod(x, tile) < 0.04)
    img[walk] = stone + 8 * fine[walk][:, None]
    img[walk & grid] = stone * 0.8
    lab[walk] = SIDEWALK
    # Curb: a light strip at the road edge, part of the sidewalk.
    for edge, on in ((st.road_l, st.curb_l), (st.road_r, st.curb_r)):
        if on:
            img[walk & (np.abs(x - edge) < 0.15)] = np.clip(stone + 35, 0, 255)

    grass = _jitter_color(rng, (105, 125, 60), 20)
    img[terr] = grass + 14 * fine[terr][:, None]
    lab[terr] = TERRAIN
    return x, z


def _facades(rng: np.random.Generator, cam: _Camera, img: np.ndarray, lab: np.ndarray,
             st: _Street, zfar: float) -> list[tuple[int, str]]:
    """Vertical planes along both sides of the street: buildings, walls, fences, hedges.

    Returns ``(sign, kind)`` per side (sign -1 = left, +1 = right; kind "buildings" or "park")
    for the object placement.
    """
    h, w = lab.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    px = xs + 0.5 - cam.cx
    sides = []
    for sign, walk in ((-1, st.walk_l), (1, st.walk_r)):
        kind = rng.choice(["buildings", "buildings", "buildings", "park"])
        setback = rng.uniform(0.0, 3.0) if kind == "buildings" else rng.uniform(2.0, 8.0)
        xb = walk + sign * setback
        side = (px * sign) > 0.5
        z = np.where(side, cam.f * xb / np.where(side, px, 1.0), np.inf)
        yw = cam.h - (ys + 0.5 - cam.cy) * z / cam.f
        if kind == "buildings":
            zc = rng.uniform(-5, 5)
            while zc < zfar:
                length = rng.uniform(8, 30)
                height = rng.uniform(6, 25)
                z0, z1 = zc, zc + length
                m = side & (z >= z0) & (z < z1) & (yw >= 0) & (yw <= height)
                base = _jitter_color(rng, [(170, 160, 145), (150, 90, 70), (200, 195, 180),
                                           (120, 120, 125), (190, 170, 120)][rng.integers(5)], 25)
                img[m] = base
                lab[m] = BUILDING
                # Windows and floors are part of the building class.
                floor = rng.uniform(2.8, 3.6)
                wspace = rng.uniform(1.8, 3.5)
                wfrac = rng.uniform(0.35, 0.6)
                glass = _jitter_color(rng, (60, 75, 95), 20)
                win = m & (yw > 1.0) & (np.mod(yw, floor) > floor * 0.35) & (np.mod(yw, floor) < floor * 0.85) \
                    & (np.mod(z - z0, wspace) < wspace * wfrac)
                img[win] = glass
                if rng.random() < 0.6:  # ground-floor shop band
                    img[m & (yw < 0.35)] = base * 0.6
                zc = z1 + (rng.uniform(0.5, 6) if rng.random() < 0.3 else 0.0)
        else:
            # Park: a hedge or a low wall / fence along the sidewalk, trees added later.
            low = rng.choice([VEGETATION, WALL, FENCE])
            height = {VEGETATION: rng.uniform(0.8, 2.0), WALL: rng.uniform(0.6, 1.5), FENCE: rng.uniform(1.0, 2.0)}[low]
            xe = walk + sign * 0.2
            ze = np.where(side, cam.f * xe / np.where(side, px, 1.0), np.inf)
            ye = cam.h - (ys + 0.5 - cam.cy) * ze / cam.f
            m = side & (ze > 0.5) & (ze < zfar) & (ye >= 0) & (ye <= height)
            if low == VEGETATION:
                color = _jitter_color(rng, (60, 100, 40), 20)
                noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.2)
                img[m] = color + 25 * noise[m][:, None]
            elif low == WALL:
                img[m] = _jitter_color(rng, (150, 145, 135), 25)
            else:
                bar = np.mod(ze, rng.uniform(0.15, 0.4)) < 0.06
                m = m & (bar | (np.abs(ye - height * 0.9) < 0.06) | (np.abs(ye - height * 0.2) < 0.06))
                img[m] = _jitter_color(rng, (120, 110, 100), 25)
            lab[m] = low
            # Distant tree line behind the park.
            far = side & (z > 0.5) & (yw >= 0) & (yw <= rng.uniform(6, 14)) & ~m & (lab == SKY)
            tree = _jitter_color(rng, (70, 105, 45), 20)
            noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 1.5)
            img[far] = tree + 30 * noise[far][:, None]
            lab[far] = VEGETATION
        sides.append((sign, kind))
    # The street ends far away: a block of distant buildings across it, with windows, covering
    # the sky and the ground beyond it.
    zend = zfar
    top = cam.cy - cam.f * (rng.uniform(8, 20) - cam.h) / zend
    xl = cam.cx + cam.f * (st.walk_l - 15) / zend
    xr = cam.cx + cam.f * (st.walk_r + 15) / zend
    gz = np.where(ys + 0.5 > cam.cy, cam.f * cam.h / np.maximum(ys + 0.5 - cam.cy, 1e-3), np.inf)
    m = (ys + 0.5 > top) & (xs + 0.5 > xl) & (xs + 0.5 < xr) & ((lab == SKY) | ((gz > zend) & (lab != BUILDING)))
    base = _jitter_color(rng, (120, 110, 105), 25)
    img[m] = base
    # Window rows every ~3 m at that depth.
    step = max(2.0, cam.f * 3.0 / zend)
    img[m & (np.mod(ys - top, step) > step * 0.5) & (np.mod(xs, step) > step * 0.5)] = base * 0.55
    lab[m] = BUILDING
    return sides


def _car(rng: np.random.Generator, cam: _Camera, img, lab, xc: float, z: float, facing_away: bool,
         kind: int = CAR) -> None:
    """A car/truck/bus seen from behind (or the front): body, cabin, windows, lights, wheels."""
    if kind == CAR:
        width, body_h, top_h = rng.uniform(1.6, 1.9), rng.uniform(0.8, 1.0), rng.uniform(1.35, 1.6)
    elif kind == TRUCK:
        width, body_h, top_h = 2.3, rng.uniform(2.6, 3.4), None
    else:
        width, body_h, top_h = 2.5, rng.uniform(2.9, 3.2), None
    paint = _jitter_color(rng, [(200, 30, 30), (30, 40, 120), (220, 220, 220), (30, 30, 30),
                                (140, 140, 150), (20, 90, 50), (230, 190, 40)][rng.integers(7)], 20)
    x0, x1 = xc - width / 2, xc + width / 2
    wheel_r = 0.33
    # Wheels first (the body overlaps them).
    for wx in (x0 + 0.1, x1 - 0.35):
        _fill_poly(img, lab, _box(cam, wx, wx + 0.25, 0.0, wheel_r * 1.3, z), (20, 20, 20), kind)
    _fill_poly(img, lab, _box(cam, x0, x1, 0.25, body_h, z), paint, kind)
    if top_h is not None:  # cabin with the rear/front window
        a = cam.project(x0 + 0.2, top_h, z)
        b = cam.project(x1 - 0.2, top_h, z)
        c = cam.project(x1 - 0.05, body_h, z)
        d = cam.project(x0 + 0.05, body_h, z)
        _fill_poly(img, lab, np.array([a, b, c, d]), paint, kind)
        a = cam.project(x0 + 0.3, top_h - 0.07, z)
        b = cam.project(x1 - 0.3, top_h - 0.07, z)
        c = cam.project(x1 - 0.15, body_h + 0.03, z)
        d = cam.project(x0 + 0.15, body_h + 0.03, z)
        _fill_poly(img, lab, np.array([a, b, c, d]), _jitter_color(rng, (50, 60, 75), 10), kind)
    else:
        _fill_poly(img, lab, _box(cam, x0 + 0.15, x1 - 0.15, body_h * 0.65, body_h * 0.92, z),
                   _jitter_color(rng, (50, 60, 75), 10), kind)
    light = (200, 20, 20) if facing_away else (250, 250, 220)
    for lx in (x0 + 0.08, x1 - 0.33):
        _fill_poly(img, lab, _box(cam, lx, lx + 0.25, body_h * 0.6, body_h * 0.78, z), light, kind)
    # Plate.
    _fill_poly(img, lab, _box(cam, xc - 0.25, xc + 0.25, 0.35, 0.47, z), (235, 235, 235), kind)


def _person(rng: np.random.Generator, cam: _Camera, img, lab, xc: float, z: float) -> None:
    """A standing pedestrian: legs, torso, arms, head."""
    height = rng.uniform(1.55, 1.95)
    s = height / 1.75
    skin = _jitter_color(rng, (190, 150, 120), 40)
    shirt = _jitter_color(rng, tuple(int(v) for v in rng.integers(30, 220, 3)), 10)
    pants = _jitter_color(rng, tuple(int(v) for v in rng.integers(20, 120, 3)), 10)
    stride = rng.uniform(0.0, 0.12)
    for dx in (-0.1 - stride, 0.02 + stride):
        _fill_poly(img, lab, _box(cam, xc + dx * s, xc + (dx + 0.12) * s, 0.0, 0.85 * s, z), pants, PERSON)
    _fill_poly(img, lab, _box(cam, xc - 0.2 * s, xc + 0.2 * s, 0.8 * s, 1.45 * s, z), shirt, PERSON)
    for dx in (-0.27, 0.19):
        _fill_poly(img, lab, _box(cam, xc + dx * s, xc + (dx + 0.08) * s, 0.85 * s, 1.42 * s, z), shirt, PERSON)
    cx, cy = cam.project(xc, 1.6 * s, z)
    r = cam.f * 0.12 * s / z
    _fill_ellipse(img, lab, (cx, cy), (r * 0.85, r), skin, PERSON)


def _cyclist(rng: np.random.Generator, cam: _Camera, img, lab, xc: float, z: float) -> None:
    """A rider on a bicycle seen from behind: thin wheel + frame (bicycle), rider above."""
    dark = (30, 30, 30)
    _fill_poly(img, lab, _box(cam, xc - 0.03, xc + 0.03, 0.0, 0.7, z), dark, BICYCLE)
    _fill_poly(img, lab, _box(cam, xc - 0.3, xc + 0.3, 0.95, 1.0, z), dark, BICYCLE)  # handlebar
    shirt = _jitter_color(rng, tuple(int(v) for v in rng.integers(30, 220, 3)), 10)
    _fill_poly(img, lab, _box(cam, xc - 0.2, xc + 0.2, 0.9, 1.5, z), shirt, RIDER)
    for dx in (-0.16, 0.06):
        _fill_poly(img, lab, _box(cam, xc + dx, xc + dx + 0.1, 0.35, 0.95, z), (40, 40, 70), RIDER)
    cx, cy = cam.project(xc, 1.65, z)
    r = cam.f * 0.13 / z
    _fill_ellipse(img, lab, (cx, cy), (r * 0.85, r), _jitter_color(rng, (60, 60, 60), 40), RIDER)


def _pole(rng: np.random.Generator, cam: _Camera, img, lab, xc: float, z: float) -> None:
    """A pole, optionally carrying a traffic sign or a traffic light."""
    height = rng.uniform(3.5, 7.0)
    grey = _jitter_color(rng, (110, 110, 115), 20)
    _fill_poly(img, lab, _box(cam, xc - 0.07, xc + 0.07, 0.0, height, z), grey, POLE)
    what = rng.random()
    if what < 0.4:
        y = rng.uniform(2.2, height - 0.4)
        cx, cy = cam.project(xc, y, z)
        r = cam.f * 0.32 / z
        if rng.random() < 0.5:
            _fill_ellipse(img, lab, (cx, cy), (r, r), (200, 30, 30), TRAFFIC_SIGN)
            _fill_ellipse(img, lab, (cx, cy), (r * 0.7, r * 0.7), (240, 240, 240), TRAFFIC_SIGN)
        else:
            _fill_poly(img, lab, _box(cam, xc - 0.32, xc + 0.32, y - 0.32, y + 0.32, z), (30, 80, 180), TRAFFIC_SIGN)
            _fill_poly(img, lab, _box(cam, xc - 0.2, xc + 0.2, y - 0.05, y + 0.05, z), (240, 240, 240), TRAFFIC_SIGN)
    elif what < 0.7:
        y = height
        _fill_poly(img, lab, _box(cam, xc - 0.2, xc + 0.2, y - 1.0, y, z), (35, 35, 35), TRAFFIC_LIGHT)
        lit = rng.integers(3)
        for i, col in enumerate([(230, 40, 30), (240, 190, 30), (40, 220, 90)]):
            cx, cy = cam.project(xc, y - 0.18 - 0.31 * i, z)
            r = cam.f * 0.1 / z
            shade = col if i == lit else tuple(c * 0.3 for c in col)
            _fill_ellipse(img, lab, (cx, cy), (r, r), shade, TRAFFIC_LIGHT)


def _tree(rng: np.random.Generator, cam: _Camera, img, lab, xc: float, z: float) -> None:
    """A street tree: trunk and a clustered canopy (all vegetation, as in Cityscapes)."""
    height = rng.uniform(4, 9)
    trunk = _jitter_color(rng, (90, 70, 50), 15)
    _fill_poly(img, lab, _box(cam, xc - 0.15, xc + 0.15, 0.0, height * 0.6, z), trunk, VEGETATION)
    leaf = _jitter_color(rng, (60, 105, 40), 25)
    rad = rng.uniform(1.5, 3.0)
    for _ in range(7):
        ox, oy = rng.uniform(-rad, rad) * 0.6, rng.uniform(-rad, rad) * 0.5
        cx, cy = cam.project(xc + ox, height - rad + oy, z)
        r = cam.f * rad * rng.uniform(0.5, 0.8) / z
        _fill_ellipse(img, lab, (cx, cy), (r, r * 0.9), np.clip(leaf + rng.integers(-20, 20, 3), 0, 255), VEGETATION)


def render_scene(seed: int | tuple[int, ...], height: int = 256, width: int = 512,
                 camera: tuple[float, float, float, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene.

    Args:
        seed: any integer (or tuple of integers) seeding ``numpy.random.default_rng``; the same seed
            always gives the same scene.
        height: image height in pixels.
        width: image width in pixels.
        camera: ``(f, cx, cy, h)``: focal length and principal point in pixels, height above the
            ground in metres of the level pinhole camera (optical axis horizontal, ``cy`` is the
            horizon row); None draws them at random from the seed. The rest of the scene is the
            same either way.

    Returns:
        ``(image, label_ids)``: an ``(H, W, 3) uint8`` RGB image and an ``(H, W) uint8`` map of
        Cityscapes labelIds (road 7, sidewalk 8, building 11, ..., car 26).
    """
    rng = np.random.default_rng(seed)
    # inf/NaN depths above the horizon are masked out below; silence their arithmetic warnings.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return _render(rng, height, width, camera)


def _render(rng: np.random.Generator, height: int, width: int,
            camera: tuple[float, float, float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((height, width, 3), np.float32)
    lab = np.zeros((height, width), np.uint8)
    f = width * rng.uniform(0.85, 1.15)
    cam = _Camera(f=f, cx=width * rng.uniform(0.42, 0.58), cy=height * rng.uniform(0.38, 0.5),
                  h=rng.uniform(1.3, 1.7))
    if camera is not None:  # drawn above all the same, so the rest of the scene is unchanged
        cam = _Camera(*(float(v) for v in camera))

    n_lanes = int(rng.choice([1, 2, 2, 3, 4]))
    lane_w = rng.uniform(2.8, 3.6)
    road_w = n_lanes * lane_w + rng.uniform(0.2, 2.0)
    ego = rng.uniform(0.25, 0.75) * road_w
    road_l = -ego
    road_r = road_l + road_w
    lanes = [road_l + (i + 0.5 * (road_w - n_lanes * lane_w) / lane_w + 0) * lane_w
             for i in range(1, n_lanes)]
    st = _Street(road_l, road_r, road_l - rng.uniform(1.5, 4.5), road_r + rng.uniform(1.5, 4.5),
                 lanes, rng.random() < 0.7, rng.random() < 0.7)
    zfar = rng.uniform(60, 160)

    _sky(rng, img, lab)
    _ground(rng, cam, img, lab, st)
    sides = _facades(rng, cam, img, lab, st, zfar)

    # Objects, drawn far to near so nearer ones occlude.
    objects: list[tuple[float, str, float]] = []
    zmin = cam.f * cam.h / (height - cam.cy) * 0.9
    for sign, kind in sides:
        walk_in, walk_out = (st.road_l, st.walk_l) if sign < 0 else (st.road_r, st.walk_r)
        spacing = rng.uniform(8, 20)
        z = rng.uniform(zmin, zmin + spacing)
        while z < zfar * 0.8:
            what = "tree" if (kind == "park" or rng.random() < 0.5) else "pole"
            objects.append((z, what, walk_out + (walk_in - walk_out) * 0.2))
            z += spacing * rng.uniform(0.6, 1.4)
        for _ in range(int(rng.integers(0, 5))):
            objects.append((rng.uniform(zmin, 45), "person", rng.uniform(min(walk_out, walk_in), max(walk_out, walk_in))))
        # Parked cars along the curb.
        if rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 4))):
                objects.append((rng.uniform(zmin + 2, 50), "parked", walk_in - sign * 1.1))
    lane_centres = [st.road_l + (i + 0.5) * (road_w / n_lanes) for i in range(n_lanes)]
    for _ in range(int(rng.integers(0, 6))):
        objects.append((rng.uniform(zmin + 3, 70), "car", float(rng.choice(lane_centres)) + rng.uniform(-0.3, 0.3)))
    if rng.random() < 0.25:
        objects.append((rng.uniform(zmin + 4, 40), "cyclist", st.road_r - 0.8))
    if rng.random() < 0.15:
        objects.append((rng.uniform(10, 60), "bigvehicle", float(rng.choice(lane_centres))))
    objects.sort(key=lambda o: -o[0])
    for z, what, xc in objects:
        if what == "tree":
            _tree(rng, cam, img, lab, xc, z)
        elif what == "pole":
            _pole(rng, cam, img, lab, xc, z)
        elif what == "person":
            _person(rng, cam, img, lab, xc, z)
        elif what in ("car", "parked"):
            _car(rng, cam, img, lab, xc, z, facing_away=(xc > 0 or what == "parked"))
        elif what == "cyclist":
            _cyclist(rng, cam, img, lab, xc, z)
        else:
            _car(rng, cam, img, lab, xc, z, True, kind=TRUCK if rng.random() < 0.5 else BUS)

    # Camera effects (image only): global exposure, sensor noise, slight blur. The label stays
    # exact: blur only spreads colour over at most a pixel at region borders.
    img *= rng.uniform(0.75, 1.2)
    img += rng.normal(0, rng.uniform(1.5, 5.0), img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.8))
    return np.clip(img, 0, 255).astype(np.uint8), lab


def colorize_label_ids(lab: np.ndarray) -> np.ndarray:
    """Official Cityscapes colours (RGB) for a labelId map (H, W) uint8 -> (H, W, 3) uint8."""
    lut = np.zeros((256, 3), np.uint8)
    for k, v in _COLOR_RGB.items():
        lut[k] = v
    return lut[lab]


def scene_path_stem(index: int) -> str:
    """The Cityscapes-style stem of scene ``index``: ``synth_000000_000019`` etc."""
    return f"{CITY}_{index // 100:06d}_{index % 100:06d}"


def write_dataset(out: str | Path, *, train: int = 200, val: int = 40, height: int = 256, width: int = 512,
                  seed: int = 0, color: bool = False) -> Path:
    """Write a synthetic dataset in the official Cityscapes layout.

    Args:
        out: output directory (created).
        train: number of training scenes.
        val: number of validation scenes.
        height: image height; width: image width.
        seed: master seed; scene i of split s uses ``default_rng((seed, s, i))``.
        color: also write ``*_gtFine_color.png`` visualisations.

    Returns:
        The output directory.
    """
    out = Path(out)
    for split, count in (("train", train), ("val", val)):
        img_dir = out / "leftImg8bit" / split / CITY
        gt_dir = out / "gtFine" / split / CITY
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, lab = render_scene((seed, SPLITS[split], i), height, width)
            stem = scene_path_stem(i)
            cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), lab)
            if color:
                cv2.imwrite(str(gt_dir / f"{stem}_gtFine_color.png"),
                            cv2.cvtColor(colorize_label_ids(lab), cv2.COLOR_RGB2BGR))
    meta = {"generator": "training.synth", "seed": seed, "train": train, "val": val,
            "height": height, "width": width,
            "note": "procedural scenes for tests/demo; not a substitute for Cityscapes"}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


#: Cityscapes train id (0..18) -> CamVid (SegNet) class id: road -> Road, sidewalk -> Pavement,
#: building and wall -> Building, fence -> Fence, pole -> Pole, traffic light and sign -> SignSymbol,
#: vegetation and terrain -> Tree, sky -> Sky, person -> Pedestrian, rider -> Bicyclist,
#: car/truck/bus/train -> Car, motorcycle/bicycle -> Bicyclist. Everything else is SegNet's void (11).
_TRAIN_ID_TO_CAMVID = (3, 4, 1, 1, 7, 2, 6, 6, 5, 5, 0, 9, 10, 8, 8, 8, 8, 10, 10)


def write_segnet_camvid(out: str | Path, *, train: int = 40, val: int = 10, test: int = 10, height: int = 360,
                        width: int = 480, seed: int = 0) -> Path:
    """Write synthetic scenes in CamVid's SegNet layout (what ``python -m training prepare camvid`` reads).

    ``OUT/{train,val,test}/NAME.png``, ``OUT/{split}annot/NAME.png`` (CamVid class ids 0..10,
    11 = void) and ``OUT/{split}.txt`` with SegNet's ``/SegNet/CamVid/...`` paths. The scenes are
    :func:`render_scene`'s with their classes mapped to CamVid's 11.

    Returns:
        The output directory.
    """
    from bisenet_ros.labels import label_ids_to_train_ids

    lut = np.full(256, 11, np.uint8)
    lut[:len(_TRAIN_ID_TO_CAMVID)] = _TRAIN_ID_TO_CAMVID
    out = Path(out)
    for split, count in (("train", train), ("val", val), ("test", test)):
        if split == "test" and not count:
            continue  # no test split at all (prepare camvid then converts train and val)
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / f"{split}annot").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(count):
            image, lab = render_scene((seed, SPLITS[split], i), height, width)
            name = f"{split}_{scene_path_stem(i)}.png"  # unique across splits, like CamVid's
            cv2.imwrite(str(out / split / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(out / f"{split}annot" / name), lut[label_ids_to_train_ids(lab)])
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
        (out / f"{split}.txt").write_text("".join(lines))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m training synth``."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--layout", choices=["cityscapes", "camvid-segnet"], default="cityscapes",
                        help="cityscapes (default): 19 classes, the official layout; camvid-segnet: CamVid's 11 "
                             "classes in the SegNet layout (train/ trainannot/ ... train.txt), for "
                             "`python -m training prepare camvid`")
    parser.add_argument("--train", type=int, default=200, help="number of training scenes (default 200)")
    parser.add_argument("--val", type=int, default=40, help="number of validation scenes (default 40)")
    parser.add_argument("--test", type=int, default=0, help="number of test scenes (camvid-segnet layout only)")
    parser.add_argument("--size", default="512x256",
                        help="image size as WIDTHxHEIGHT (default 512x256)")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--color", action="store_true", help="also write *_gtFine_color.png files")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` into ``(width, height)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 512x256; got {text!r}") from None
    if w < 32 or h < 32:
        raise ValueError(f"size must be at least 32x32; got {text!r}")
    return w, h


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m training synth``."""
    w, h = parse_size(args.size)
    if args.layout == "camvid-segnet":
        out = write_segnet_camvid(args.out, train=args.train, val=args.val, test=args.test, height=h, width=w,
                                  seed=args.seed)
        print(f"wrote {args.train} train + {args.val} val + {args.test} test scenes ({w}x{h}, CamVid SegNet "
              f"layout) to {out}")
        return 0
    if args.test:
        raise ValueError("--test is for --layout camvid-segnet (the Cityscapes layout has train and val)")
    out = write_dataset(args.out, train=args.train, val=args.val, height=h, width=w, seed=args.seed,
                        color=args.color)
    print(f"wrote {args.train} train + {args.val} val scenes ({w}x{h}) to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
