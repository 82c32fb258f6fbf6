"""SynthTalk renderer: a stylised 3-D head, posed and projected, drawn with anti-aliased shapes.

The head is an ellipsoid in head coordinates (x right, y down, z towards the camera). Eyes, brows, nose and
mouth sit at 3-D points on (or, for the nose tip, in front of) its surface; each frame rotates them by
R = Rz(roll) Ry(yaw) Rx(pitch), projects orthographically, scales and translates. So features move with yaw
and pitch as on a real head (the protruding nose moves furthest), foreshorten, and fade as they turn away.
Shapes are signed-distance ellipses and capsules with coverage clip(0.5 - d / pixel, 0, 1) (anti-aliased).
Everything is vectorised over a chunk of frames: [N, H, W] arrays, per-frame parameters [N, 1, 1].
"""

from __future__ import annotations

import numpy as np

IDENTITY_LAYOUT = ("skin_r", "skin_g", "skin_b", "hair_r", "hair_g", "hair_b", "bg_r", "bg_g", "bg_b", "iris_hue",
                   "face_w", "face_h", "eye_spacing", "eye_size", "nose_len", "mouth_w")
MOTION_LAYOUT = ("yaw", "pitch", "roll", "tx", "ty", "scale", "jaw", "lip_round", "blink", "brow_l", "brow_r",
                 "gaze_x", "gaze_y")
# typical scale of each motion dimension (v1), to normalise before the implicit mixes
MOTION_SCALE = np.array([0.25, 0.12, 0.06, 0.04, 0.03, 0.04, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], np.float32)
ID = {k: i for i, k in enumerate(IDENTITY_LAYOUT)}
MO = {k: i for i, k in enumerate(MOTION_LAYOUT)}


def _rot(yaw, pitch, roll):
    """Per-frame rotation matrices [N, 3, 3] = Rz(roll) @ Ry(yaw) @ Rx(pitch)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    o, z = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([o, z, z, z, cp, -sp, z, sp, cp], -1).reshape(-1, 3, 3)
    ry = np.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).reshape(-1, 3, 3)
    rz = np.stack([cr, -sr, z, sr, cr, z, z, z, o], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def _ellipse(x, y, cx, cy, a, b, ang, px):
    """Coverage of a rotated ellipse (approximate signed distance, scaled by the minor axis)."""
    c, s = np.cos(ang), np.sin(ang)
    dx, dy = x - cx, y - cy
    u, v = dx * c + dy * s, -dx * s + dy * c
    a, b = np.maximum(a, 1e-4), np.maximum(b, 1e-4)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    d = (r - 1) * np.minimum(a, b)
    return np.clip(0.5 - d / px, 0, 1)


def _capsule(x, y, x0, y0, x1, y1, rad, px):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    d = np.hypot(x - x0 - t * dx, y - y0 - t * dy) - rad
    return np.clip(0.5 - d / px, 0, 1)


def _hue(h):
    """Hue in [0, 1) -> a muted RGB."""
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h) % 6
    rgb = 1 - np.clip(np.minimum(k, 4 - k), 0, 1)
    return 0.25 + 0.45 * rgb


def render(identity: np.ndarray, motion: np.ndarray, size: int, chunk: int | None = None,
           extra: dict | None = None) -> np.ndarray:
    """identity [16] (IDENTITY_LAYOUT), motion [T, 13] (MOTION_LAYOUT) -> uint8 frames [T, size, size, 3].
    Frames are drawn `chunk` at a time (default: about 256k pixels per chunk, which stays in cache).

    extra (SynthTalk v2; None draws v1 exactly): "light" [T, 3] (image-space light centre x, y and intensity),
    "detail" [T, 2] (DETAIL_LAYOUT: what the 13 named numbers miss), "mark" [5] (MARK_LAYOUT: a side-specific
    identity cue on the side of the head, seen only when that side faces the camera)."""
    chunk = chunk or max(4, min(64, (1 << 18) // (size * size)))
    out = np.empty((len(motion), size, size, 3), np.uint8)
    for i in range(0, len(motion), chunk):
        part = None if extra is None else {k: v if k == "mark" else v[i : i + chunk] for k, v in extra.items()}
        out[i : i + chunk] = _render_chunk(identity, motion[i : i + chunk], size, part)
    return out


DETAIL_LAYOUT = ("mouth_asym", "cheek")
MARK_LAYOUT = ("mark_side", "mark_v", "mark_r", "mark_g", "mark_b")
PARTS = ("eye_l", "eye_r", "mouth", "mark")  # `visibility` columns


def mark_point(identity_fw: float, identity_fh: float, mark: np.ndarray) -> tuple[float, float, float]:
    """Head-space point of the side mark: on the ellipsoid's side, at height mark_v (a fraction of face_h)."""
    side, v = float(mark[0]), float(mark[1])
    x, y = side * 0.92 * identity_fw, v * identity_fh
    return x, y, identity_fw * float(np.sqrt(max(1e-3, 1 - (x / identity_fw) ** 2 - (y / identity_fh) ** 2)))


def visibility(identity: np.ndarray, motion: np.ndarray, mark: np.ndarray | None = None,
               threshold: float = 0.1) -> np.ndarray:
    """[T, len(PARTS)] bool: whether each part's surface faces the camera (normal z > threshold) in each frame.
    A part that is not drawn (no mark) is never visible."""
    fw, fh = float(identity[ID["face_w"]]), float(identity[ID["face_h"]])
    rot = _rot(motion[:, MO["yaw"]], motion[:, MO["pitch"]], motion[:, MO["roll"]])
    es = float(identity[ID["eye_spacing"]]) * fw

    def faces(p) -> np.ndarray:
        nrm = np.asarray(p, np.float64) / np.array([fw, fh, fw]) ** 2
        return (rot @ (nrm / np.linalg.norm(nrm)))[:, 2] > threshold

    def front(u, v):
        return (u, v, fw * np.sqrt(max(1e-3, 1 - (u / fw) ** 2 - (v / fh) ** 2)))

    cols = [faces(front(-es / 2, -0.12 * fh)), faces(front(es / 2, -0.12 * fh)), faces(front(0, 0.36 * fh)),
            faces(mark_point(fw, fh, mark)) if mark is not None else np.zeros(len(motion), bool)]
    return np.stack(cols, 1)


def _render_chunk(idv: np.ndarray, mo: np.ndarray, size: int, extra: dict | None = None) -> np.ndarray:
    f32 = np.float32
    n = len(mo)
    px = f32(2.0 / size)
    g = (np.arange(size, dtype=f32) + 0.5) * px - 1
    x, y = g[None, None, :], g[None, :, None]  # image coords in [-1, 1], y down
    col = lambda k: mo[:, MO[k]].astype(f32)[:, None, None]  # noqa: E731  per-frame [N, 1, 1]
    skin = idv[[ID["skin_r"], ID["skin_g"], ID["skin_b"]]].astype(f32)
    hair = idv[[ID["hair_r"], ID["hair_g"], ID["hair_b"]]].astype(f32)
    bg = idv[[ID["bg_r"], ID["bg_g"], ID["bg_b"]]].astype(f32)
    iris = _hue(idv[ID["iris_hue"]]).astype(f32)
    fw, fh = idv[ID["face_w"]], idv[ID["face_h"]]
    rot = _rot(mo[:, MO["yaw"]], mo[:, MO["pitch"]], mo[:, MO["roll"]]).astype(f32)  # [N, 3, 3]
    sc, tx, ty, roll = col("scale"), col("tx"), col("ty"), col("roll")

    def project(p):
        """Head-space points [3] -> image x, y [N, 1, 1] and the depth-facing factor nz [N, 1, 1]."""
        q = rot @ np.asarray(p, f32)
        return q[:, 0, None, None] * sc + tx, q[:, 1, None, None] * sc + ty, q[:, 2, None, None]

    def facing(p):
        """How much the surface normal at head point p faces the camera (foreshortening, fading)."""
        nrm = np.asarray(p, f32) / np.array([fw, fh, fw], f32) ** 2
        q = rot @ (nrm / np.linalg.norm(nrm))
        return np.clip(q[:, 2, None, None], 0, 1), np.clip(np.abs(q[:, 0, None, None]), 0, 1)

    def front(u, v):
        """Head point on the front of the ellipsoid at head-space (u, v)."""
        return (u, v, fw * np.sqrt(max(1e-3, 1 - (u / fw) ** 2 - (v / fh) ** 2)))

    full = np.broadcast_to((bg * (1.05 - 0.1 * (y[..., None] + 1) / 2)).astype(f32), (n, size, size, 3)).copy()
    # Everything else lies inside the head: draw only in the box that holds it in every frame of the chunk.
    hcx, hcy, _ = project((0, 0, 0))
    reach = 1.25 * max(fw, fh) * float(sc.max()) + 2 * px
    c0, c1 = (np.clip(((np.array([hcx.min() - reach, hcx.max() + reach]) + 1) / px), 0, size)).astype(int)
    r0, r1 = (np.clip(((np.array([hcy.min() - reach, hcy.max() + reach]) + 1) / px), 0, size)).astype(int)
    c1, r1 = max(c1 + 1, c0 + 1), max(r1 + 1, r0 + 1)
    img = np.ascontiguousarray(full[:, r0:r1, c0:c1])  # written back at the end
    x, y = x[..., c0:c1], y[:, r0:r1]

    def paint(alpha, color):
        """Blend `color` with coverage alpha [N, h, w], only inside the box where some frame has alpha > 0."""
        rows = np.flatnonzero(alpha.any(axis=(0, 2)))
        if len(rows) == 0:
            return
        cols = np.flatnonzero(alpha.any(axis=(0, 1)))
        box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        a = np.broadcast_to(alpha, img.shape[:3])[box][..., None]
        sub = img[box]
        sub += a * (np.asarray(color, f32) - sub)

    jaw = col("jaw")
    cx, cy, _ = project((0, 0, 0))
    # hair behind the head, then the face; the lower face stretches as the jaw opens
    hx, hy, _ = project((0, -0.12 * fh, -0.3 * fw))
    paint(_ellipse(x, y, hx, hy, 1.12 * fw * sc, 1.04 * fh * sc, roll, px), hair)
    fcx, fcy, _ = project((0, 0.02 * fh, 0))
    cheek = 1.0 if extra is None else 1 + 0.06 * extra["detail"][:, 1].astype(f32)[:, None, None]
    face = _ellipse(x, y, fcx, fcy + 0.03 * fh * jaw * sc, fw * sc * cheek, fh * sc * (1 + 0.06 * jaw), roll, px)
    if extra is None:  # shading: darker towards the rim, lit from the upper left, turning with the head
        lx, ly, _ = project((-0.4 * fw, -0.4 * fh, 0.9 * fw))
        shade = 1.08 - 0.22 * np.clip(((x - lx) ** 2 + (y - ly) ** 2) / (fw * sc * 1.6) ** 2, 0, 1)
    else:  # v2: a light that moves in the room (image space) and changes strength, whatever the head does
        light = extra["light"].astype(f32)
        lx, ly, li = (light[:, j, None, None] for j in range(3))
        shade = li * (1.08 - 0.35 * np.clip(((x - lx) ** 2 + (y - ly) ** 2) / (fw * sc * 1.8) ** 2, 0, 1))
    img += face[..., None] * (skin * shade[..., None] - img)
    # fringe: hair over the top of the face, above a hairline that moves with pitch and roll
    hlx, hly, _ = project(front(0, -0.50 * fh))
    ux, uy = np.sin(roll), -np.cos(roll)  # the head's "up" in the image
    along = (x - hlx) * -uy + (y - hly) * ux  # position along the hairline, for a gentle wave
    above = np.clip(0.5 + ((x - hlx) * ux + (y - hly) * uy - 0.02 * np.cos(3 * along / fw)) / px, 0, 1)
    paint(face * above, hair)

    def feature(alpha, color):  # features never leave the face's silhouette
        paint(alpha * face, color)

    es, esz = idv[ID["eye_spacing"]] * fw, idv[ID["eye_size"]]
    blink, gx, gy = col("blink"), col("gaze_x"), col("gaze_y")
    for side, brow in ((-1, "brow_l"), (1, "brow_r")):
        p = front(side * es / 2, -0.12 * fh)
        ex, ey, _ = project(p)
        fz, _ = facing(p)
        ew, eh = esz * fw * sc * (0.35 + 0.65 * fz), 0.62 * esz * fw * sc
        open_ = np.clip(1 - blink, 0.04, 1)
        white = _ellipse(x, y, ex, ey, ew, eh * open_, roll, px) * np.clip(3 * fz, 0, 1)
        feature(white, (0.95, 0.95, 0.93))
        ix, iy = ex + gx * 0.45 * ew, ey + gy * 0.35 * eh
        feature(white * _ellipse(x, y, ix, iy, 0.55 * eh * (0.4 + 0.6 * fz), 0.55 * eh, roll, px), iris)
        feature(white * _ellipse(x, y, ix, iy, 0.25 * eh * (0.4 + 0.6 * fz), 0.25 * eh, roll, px), (0.05, 0.05, 0.07))
        feature(_ellipse(x, y, ex, ey - eh * open_, ew, 0.12 * eh, roll, px) * (fz > 0.05), skin * 0.55)  # lid line
        bp = front(side * es / 2, -0.27 * fh)
        bx, by, _ = project(bp)
        lift = col(brow) * 0.07 * fh * sc
        dx, dy = np.cos(roll) * ew * 1.1, np.sin(roll) * ew * 1.1
        bx, by = bx + np.sin(roll) * lift, by - np.cos(roll) * lift
        feature(_capsule(x, y, bx - dx, by - dy, bx + dx, by + dy, 0.18 * eh, px) * np.clip(3 * fz, 0, 1),
              hair * 0.8)

    nl = idv[ID["nose_len"]] * fh
    base = front(0, 0.12 * fh)
    nx, ny, _ = project(base)
    tipx, tipy, _ = project((0, 0.14 * fh, base[2] + 0.35 * nl))
    feature(_capsule(x, y, nx + (tipx - nx) * 0.2, ny - 0.15 * nl * sc, tipx, tipy, 0.07 * fw * sc, px), skin * 0.78)
    feature(_ellipse(x, y, tipx, tipy + 0.02 * fh * sc, 0.1 * fw * sc, 0.045 * fh * sc, roll, px), skin * 0.62)

    mp = front(0, 0.36 * fh)
    mx, my, _ = project(mp)
    fz, _ = facing(mp)
    mw = idv[ID["mouth_w"]] * fw * sc * (1 - 0.45 * col("lip_round")) * (0.4 + 0.6 * fz)
    mh = (0.012 + 0.16 * jaw) * fh * sc
    my = my + 0.5 * mh
    tilt = roll if extra is None else roll + 0.35 * extra["detail"][:, 0].astype(f32)[:, None, None]
    feature(_ellipse(x, y, mx, my, mw * 1.12, mh + 0.035 * fh * sc, tilt, px), (0.62, 0.28, 0.30))  # lips
    feature(_ellipse(x, y, mx, my, mw, mh, tilt, px), (0.22, 0.05, 0.07))  # inside of the mouth
    if extra is not None and "mark" in extra:  # the side cue: foreshortened with its surface, gone when it faces away
        mark = np.asarray(extra["mark"], f32)
        kp = mark_point(fw, fh, mark)
        kx, ky, _ = project(kp)
        kz, _ = facing(kp)
        rad = 0.09 * fw * sc
        feature(_ellipse(x, y, kx, ky, rad * (0.25 + 0.75 * kz), rad, roll, px) * np.clip(4 * (kz - 0.1), 0, 1),
                tuple(mark[2:5]))
    full[:, r0:r1, c0:c1] = img
    return (np.clip(full, 0, 1) * 255 + 0.5).astype(np.uint8)
