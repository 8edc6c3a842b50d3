"""Synthetic clips with exact ground truth: known camera motion over a natural image plus a moving object.

The background is a natural photo from ``skimage.data`` (scikit-image is a dev/test dependency, imported
lazily). The camera is an affine per frame, rendered by exact inverse mapping: pixel ``p`` (x right,
y down, pixel centres at integers) of frame ``t`` shows the canvas point

    s = A_t(p) = m_t + R(theta_t) (p - c) / z_t,     m_t = m_0 - t * pan,  z_t = zoom^t,  theta_t = t * rotation

(``c`` the frame centre), sampled bilinearly from a canvas big enough that no frame ever samples outside
it. Over the background a textured rectangle (a crop of another photo) translates by ``object_velocity``
pixels per frame in screen space. Because everything is analytic the true flow is exact:

    background: flow_t(p) = A_{t+1}^{-1}(A_t(p)) - p          object: flow_t(p) = object_velocity

``flow[t]`` maps pixel ``p`` of frame ``t`` to its position ``p + flow[t](p)`` in frame ``t + 1`` (so
``frame[t](p) ~= frame[t+1](p + flow[t](p))``, i.e. backward-warping frame t+1 with flow[t] gives frame t).

``occlusion[t]`` (frame t coordinates) is True where that correspondence is not valid: the object covers
the background point in frame t+1, the point leaves the frame, or its target lies within 1 px of the
object's edge in frame t+1 (bilinear sampling there would mix surfaces). ``disocclusion[t]`` is the same
test in the backward direction (frame t+1 coordinates, ``flow_bwd[t]``): background the object uncovers,
content entering the frame, and the 1 px edge band.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
          "brick", "grass", "gravel", "retina", "colorwheel")
MOTIONS = ("static", "pan", "zoom", "rotate", "mixed")


@dataclass
class SyntheticClip:
    """A clip and its ground truth. Shapes: ``frames [T,H,W,3]`` float32 0..1 (ComfyUI IMAGE),
    ``flow``/``flow_bwd`` ``[T-1,2,H,W]`` float32 pixels (dx, dy), ``occlusion``/``disocclusion``
    ``[T-1,H,W]`` bool, ``object_mask [T,H,W]`` bool."""

    frames: torch.Tensor
    flow: torch.Tensor
    occlusion: torch.Tensor
    flow_bwd: torch.Tensor
    disocclusion: torch.Tensor
    object_mask: torch.Tensor
    info: dict = field(default_factory=dict)

    def flow_field(self):
        """The ground truth as a ``flow.FlowField`` (the pack's FLOW type): exact forward/backward flows,
        occlusion_fwd = ``occlusion``, occlusion_bwd = ``disocclusion``, confidence = 1 - occlusion."""
        from .flow import FlowField

        of = self.occlusion[:, None].float()
        ob = self.disocclusion[:, None].float()
        h, w = self.frames.shape[1:3]
        return FlowField(forward=self.flow.float(), backward=self.flow_bwd.float(), occlusion_fwd=of,
                         occlusion_bwd=ob, confidence_fwd=1 - of, confidence_bwd=1 - ob, height=int(h),
                         width=int(w), backend="ground_truth")


def load_image(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as float64 RGB ``[H, W, 3]`` in 0..1."""
    if name not in IMAGES:
        raise ValueError(f"image: expected one of {list(IMAGES)}, got {name!r}")
    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("synthetic clips need scikit-image (a dev/test dependency): "
                          "pip install scikit-image") from e
    img = np.asarray(getattr(data, name)())
    if img.dtype == bool:
        img = img.astype(np.float64)
    elif img.dtype == np.uint8:
        img = img.astype(np.float64) / 255.0
    else:
        img = img.astype(np.float64)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def _resize(img: np.ndarray, w: int, h: int, blur: float = 0.0) -> np.ndarray:
    import cv2

    shrink = w < img.shape[1] or h < img.shape[0]
    out = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), float(blur), borderType=cv2.BORDER_REFLECT)
    return np.clip(out, 0, 1).astype(np.float64)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``img [h, w, C]`` at float coordinates (x, y) (same shape), edge-clamped, float64."""
    h, w = img.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    a, b = img[y0, x0], img[y0, x0 + 1]
    c, d = img[y0 + 1, x0], img[y0 + 1, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


class _Camera:
    """s = m_t + R(theta_t) (p - c) / z_t  and its inverse."""

    def __init__(self, m0, pan, zoom, rotation_deg, centre):
        self.m0 = np.asarray(m0, np.float64)
        self.pan = np.asarray(pan, np.float64)
        self.zoom = float(zoom)
        self.rot = math.radians(float(rotation_deg))
        self.c = np.asarray(centre, np.float64)

    def _params(self, t):
        th = self.rot * t
        return self.m0 - t * self.pan, self.zoom ** t, math.cos(th), math.sin(th)

    def to_canvas(self, t, x, y):
        m, z, co, si = self._params(t)
        dx, dy = x - self.c[0], y - self.c[1]
        return m[0] + (co * dx - si * dy) / z, m[1] + (si * dx + co * dy) / z

    def to_frame(self, t, sx, sy):
        m, z, co, si = self._params(t)
        dx, dy = sx - m[0], sy - m[1]
        return self.c[0] + z * (co * dx + si * dy), self.c[1] + z * (-si * dx + co * dy)


def _motion_params(motion, rng, size):
    pan, zoom, rot = (0.0, 0.0), 1.0, 0.0
    k = 0.5 if motion == "mixed" else 1.0
    if motion in ("pan", "mixed"):
        a = rng.uniform(0, 2 * math.pi)
        sp = rng.uniform(0.012, 0.03) * size * k
        pan = (sp * math.cos(a), sp * math.sin(a))
    if motion in ("zoom", "mixed"):
        zoom = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.008, 0.02) * k
    if motion in ("rotate", "mixed"):
        rot = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.2) * k
    return pan, zoom, rot


def make_clip(image: str = "astronaut", frames: int = 16, height: int = 64, width: int = 96,
              motion: str = "mixed", seed: int = 0, *, pan=None, zoom=None, rotation=None,
              moving_object: bool = True, object_velocity=None, object_image: str | None = None,
              canvas_blur: float = 0.6) -> SyntheticClip:
    """Render a clip with exact flow/occlusion ground truth (see the module docstring).

    ``motion``: one of ``MOTIONS``; the seed draws its magnitudes and directions, and ``pan`` ((dx, dy)
    pixels per frame the background moves on screen at zoom 1), ``zoom`` (scale factor per frame, > 1
    zooms in) and ``rotation`` (degrees per frame) override them. ``object_velocity`` ((dx, dy) pixels per
    frame) overrides the object's random velocity. ``height``/``width`` must be multiples of 8.
    ``canvas_blur``: Gaussian sigma (pixels) applied to the scaled photos, a mild optical low-pass that
    keeps bilinear re-sampling error small, so a warp with the true flow reproduces the next frame closely.
    """
    if image not in IMAGES:
        raise ValueError(f"image: expected one of {list(IMAGES)}, got {image!r}")
    if motion not in MOTIONS:
        raise ValueError(f"motion: expected one of {list(MOTIONS)}, got {motion!r}")
    if int(frames) < 1:
        raise ValueError(f"frames: expected at least 1 frame, got {frames}")
    for name, v in (("height", height), ("width", width)):
        if int(v) < 16 or int(v) % 8:
            raise ValueError(f"{name}: expected a multiple of 8 that is >= 16, got {v}")
    if canvas_blur < 0:
        raise ValueError(f"canvas_blur: expected a Gaussian sigma >= 0 pixels, got {canvas_blur}")
    if zoom is not None and zoom <= 0:
        raise ValueError(f"zoom: expected a positive scale factor per frame, got {zoom}")
    T, H, W = int(frames), int(height), int(width)
    rng = np.random.default_rng([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, 7])
    d_pan, d_zoom, d_rot = _motion_params(motion, rng, max(H, W))
    pan = d_pan if pan is None else tuple(float(v) for v in pan)
    zoom = d_zoom if zoom is None else float(zoom)
    rotation = d_rot if rotation is None else float(rotation)
    centre = ((W - 1) / 2.0, (H - 1) / 2.0)

    # Canvas: bounding box of every frame's corners (m_0 = 0), then scale the photo to cover it.
    cam0 = _Camera((0.0, 0.0), pan, zoom, rotation, centre)
    cx = np.array([0.0, W - 1, 0.0, W - 1])
    cy = np.array([0.0, 0.0, H - 1, H - 1])
    pts = [cam0.to_canvas(t, cx, cy) for t in range(T)]
    xs = np.concatenate([p[0] for p in pts])
    ys = np.concatenate([p[1] for p in pts])
    ext_x, ext_y = xs.max() - xs.min() + 6.0, ys.max() - ys.min() + 6.0
    src = load_image(image)
    hs, ws = src.shape[:2]
    scale = max(ext_x / ws, ext_y / hs, 1.5 * max(W / ws, H / hs))
    wc, hc = int(math.ceil(ws * scale)), int(math.ceil(hs * scale))
    canvas = _resize(src, wc, hc, canvas_blur)
    slack_x = (wc - 1) - (xs.max() - xs.min()) - 4.0
    slack_y = (hc - 1) - (ys.max() - ys.min()) - 4.0
    m0 = (2.0 - xs.min() + rng.uniform(0, max(slack_x, 0.0)), 2.0 - ys.min() + rng.uniform(0, max(slack_y, 0.0)))
    cam = _Camera(m0, pan, zoom, rotation, centre)

    # Moving object: a crop of another photo, translating in screen space.
    ow = int(round(W * rng.uniform(0.2, 0.35)))
    oh = int(round(H * rng.uniform(0.25, 0.4)))
    if object_image is None:
        others = [n for n in IMAGES if n != image]
        object_image = others[int(rng.integers(len(others)))]
    if object_velocity is None:
        a = rng.uniform(0, 2 * math.pi)
        sp = rng.uniform(0.015, 0.03) * max(H, W)
        object_velocity = (sp * math.cos(a), sp * math.sin(a))
    vel = np.asarray(object_velocity, np.float64)
    c_mid = np.array(centre) + rng.uniform(-1, 1, 2) * np.array([W / 6.0, H / 6.0])
    c0 = c_mid - vel * (T - 1) / 2.0
    tex = None
    if moving_object:
        osrc = load_image(object_image)
        side = rng.uniform(0.4, 0.7) * min(osrc.shape[:2])
        cw = min(osrc.shape[1], side * (ow + 4) / max(ow, oh))
        ch = min(osrc.shape[0], side * (oh + 4) / max(ow, oh))
        x0 = int(rng.uniform(0, osrc.shape[1] - cw))
        y0 = int(rng.uniform(0, osrc.shape[0] - ch))
        tex = _resize(osrc[y0:y0 + int(ch), x0:x0 + int(cw)], ow + 4, oh + 4, canvas_blur)

    gy, gx = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    half = np.array([ow / 2.0, oh / 2.0])

    def obj_centre(t):
        return c0 + t * vel

    def in_rect(t, x, y, grow=0.0):
        if not moving_object:
            return np.zeros(x.shape, bool)
        c = obj_centre(t)
        return (np.abs(x - c[0]) < half[0] + grow) & (np.abs(y - c[1]) < half[1] + grow)

    out = np.empty((T, H, W, 3), np.float64)
    omask = np.zeros((T, H, W), bool)
    for t in range(T):
        sx, sy = cam.to_canvas(t, gx, gy)
        f = _bilinear(canvas, sx, sy)
        if moving_object:
            m = in_rect(t, gx, gy)
            c = obj_centre(t)
            ux = gx - c[0] + ow / 2.0 + 1.5
            uy = gy - c[1] + oh / 2.0 + 1.5
            f[m] = _bilinear(tex, ux, uy)[m]
            omask[t] = m
        out[t] = f

    def flow_and_occ(t_from, t_to, sign):
        """Flow from frame t_from to t_to at pixels of t_from, and its occlusion mask."""
        sx, sy = cam.to_canvas(t_from, gx, gy)
        qx, qy = cam.to_frame(t_to, sx, sy)
        obj = omask[t_from]
        qx = np.where(obj, gx + sign * vel[0], qx)
        qy = np.where(obj, gy + sign * vel[1], qy)
        outside = (qx < 0) | (qx > W - 1) | (qy < 0) | (qy > H - 1)
        band = in_rect(t_to, qx, qy, 1.0) & ~in_rect(t_to, qx, qy, -1.0)
        covered = ~obj & in_rect(t_to, qx, qy)
        flow = np.stack([qx - gx, qy - gy])
        return flow, outside | band | covered

    fw, fo, bw, bo = [], [], [], []
    for t in range(T - 1):
        f, o = flow_and_occ(t, t + 1, 1.0)
        b, d = flow_and_occ(t + 1, t, -1.0)
        fw.append(f)
        fo.append(o)
        bw.append(b)
        bo.append(d)

    def stack(lst, shape, dtype):
        return torch.from_numpy(np.stack(lst).astype(dtype)) if lst else torch.zeros(shape, dtype=getattr(torch, dtype))

    info = {"image": image, "object_image": object_image if moving_object else None, "motion": motion,
            "seed": int(seed), "pan": [float(v) for v in pan], "zoom": float(zoom),
            "rotation_deg": float(rotation), "object_velocity": [float(v) for v in vel],
            "object_size": [ow, oh] if moving_object else None}
    return SyntheticClip(
        frames=torch.from_numpy(np.clip(out, 0, 1).astype(np.float32)),
        flow=stack(fw, (0, 2, H, W), "float32"),
        occlusion=stack(fo, (0, H, W), "bool"),
        flow_bwd=stack(bw, (0, 2, H, W), "float32"),
        disocclusion=stack(bo, (0, H, W), "bool"),
        object_mask=torch.from_numpy(omask),
        info=info,
    )


FLOW_QUANT = 64  # ground-truth files store flow in 1/64 pixel steps (error <= 1/128 px)


def _encode_flow(flow: torch.Tensor) -> np.ndarray:
    q = np.clip(np.round(flow.numpy().astype(np.float64) * FLOW_QUANT), -32767, 32767).astype(np.int32)
    return np.diff(q, axis=-1, prepend=0).astype(np.int32).clip(-32768, 32767).astype(np.int16)


def _decode_flow(d: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((np.cumsum(d.astype(np.int32), axis=-1) / FLOW_QUANT).astype(np.float32))


def save_ground_truth(path: str, clip: SyntheticClip, **extra) -> None:
    """Write ``clip``'s ground truth to a compressed ``.npz`` (about 0.35 MB for 16 frames of 128x96).

    Frames: the clean frames rounded to 8 bit, each a lossless PNG (``frames_png`` bytes + ``frames_offsets``).
    Flows (``flow``/``flow_bwd``): quantised to 1/64 px and delta-coded along x (int16), so they compress.
    ``occlusion``/``disocclusion`` bool ``[T-1,H,W]``, ``object_mask`` bool ``[T,H,W]``, ``info`` a JSON string
    with the clip parameters plus ``extra``. Read it back with ``load_ground_truth``.
    """
    import json

    import cv2

    u8 = (clip.frames.numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    pngs = []
    for f in u8:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(f[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a PNG frame")
        pngs.append(buf.reshape(-1))
    offsets = np.cumsum([0] + [len(b) for b in pngs]).astype(np.int64)
    np.savez_compressed(
        path,
        frames_png=np.concatenate(pngs),
        frames_offsets=offsets,
        flow=_encode_flow(clip.flow),
        flow_bwd=_encode_flow(clip.flow_bwd),
        occlusion=clip.occlusion.numpy(),
        disocclusion=clip.disocclusion.numpy(),
        object_mask=clip.object_mask.numpy(),
        info=np.array(json.dumps({**clip.info, **extra, "flow_quant": FLOW_QUANT})),
    )


def load_ground_truth(path: str) -> SyntheticClip:
    """Read a file written by ``save_ground_truth`` back as a ``SyntheticClip`` (frames float32 0..1, the 8-bit
    clean frames; flows exact to 1/128 px)."""
    import json

    import cv2

    with np.load(path, allow_pickle=False) as z:
        data, off = z["frames_png"], z["frames_offsets"]
        frames = np.stack([cv2.imdecode(data[off[i]:off[i + 1]], cv2.IMREAD_COLOR)[..., ::-1]
                           for i in range(len(off) - 1)])
        return SyntheticClip(
            frames=torch.from_numpy(frames.astype(np.float32) / 255.0),
            flow=_decode_flow(z["flow"]),
            occlusion=torch.from_numpy(z["occlusion"].astype(bool)),
            flow_bwd=_decode_flow(z["flow_bwd"]),
            disocclusion=torch.from_numpy(z["disocclusion"].astype(bool)),
            object_mask=torch.from_numpy(z["object_mask"].astype(bool)),
            info=json.loads(str(z["info"])),
        )
