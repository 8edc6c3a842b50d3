"""Deterministic synthetic degradations of a clip, the input side of the measuring stick.

Every function takes ``frames`` as a ComfyUI IMAGE batch, ``[T, H, W, 3]`` float in 0..1 (one batch item
per frame), and returns a new float32 tensor in 0..1 of the same shape (``sr_x2``/``sr_x4`` return
``[T, H // s, W // s, 3]``). Randomness comes only from a local ``torch.Generator`` or
``numpy.random.Generator`` seeded with ``seed``: the same seed gives bit-identical output, a different seed
differs, and nothing touches the global RNG state. Sensor noise is drawn independently for each frame.

Tasks and the meaning of ``strength`` (``None`` -> the default in ``DEFAULT_STRENGTH``):

================  =========================================================================================
``denoise``       additive white Gaussian noise, strength = sigma on the 0..255 scale (25)
``deblur``        Gaussian blur, strength = sigma in pixels (2.0)
``sr_x2/sr_x4``   bicubic antialiased downscale by 2 / 4 (size floored), strength = Gaussian noise sigma
                  (0..255 scale) added after the downscale (0)
``jpeg``          per-frame JPEG encode/decode with OpenCV, strength = quality 1..100 (20)
``video_codec``   whole clip through a PyAV encoder and back (h264 via libx264, or mpeg4), strength = crf
                  0..51 for h264 (35); ``bitrate`` (kbit/s) overrides crf and is the only knob of mpeg4
``derain``        rain streaks: sparse drops motion-blurred along one wind direction, falling across the
                  frames, screen-blended; strength = rain intensity 0..1 (0.5)
``dehaze``        atmospheric scattering I = J t + A (1 - t), t = exp(-beta d) with a depth-like map d in
                  0..1 (far at the top plus smooth random relief); strength = beta (1.5)
``low_light``     I = gain * J^gamma + Poisson-Gaussian sensor noise; strength = darkness 0..1 (0.6):
                  gamma = 1 + 1.5 s, gain = 1 - 0.75 s, read-noise sigma = (2 + 6 s)/255, shot noise
                  variance 0.01 s * signal
================  =========================================================================================
"""
from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

TASKS = frozenset({"denoise", "derain", "dehaze", "deblur", "sr_x2", "sr_x4", "jpeg", "video_codec", "low_light"})

DEFAULT_STRENGTH = {
    "denoise": 25.0,
    "deblur": 2.0,
    "sr_x2": 0.0,
    "sr_x4": 0.0,
    "jpeg": 20.0,
    "video_codec": 35.0,
    "derain": 0.5,
    "dehaze": 1.5,
    "low_light": 0.6,
}

# Human-readable meaning of ``strength`` per task (used for node tooltips).
STRENGTH_MEANING = {
    "denoise": "Gaussian noise sigma on the 0..255 scale",
    "deblur": "Gaussian blur sigma in pixels",
    "sr_x2": "noise sigma (0..255) added after the x2 downscale",
    "sr_x4": "noise sigma (0..255) added after the x4 downscale",
    "jpeg": "JPEG quality 1..100 (lower is worse)",
    "video_codec": "h264 crf 0..51 (higher is worse)",
    "derain": "rain intensity 0..1",
    "dehaze": "haze density beta (transmission exp(-beta*depth))",
    "low_light": "darkness 0..1",
}

VIDEO_CODECS = {"h264": "libx264", "mpeg4": "mpeg4"}


# ----------------------------------------------------------------------------------------------- helpers
def check_frames(frames, name: str = "frames") -> torch.Tensor:
    """Validate a ComfyUI IMAGE batch ``[T, H, W, 3]`` and return it as float32 (no copy if already so)."""
    return validate_frames(frames, name).float()


def validate_frames(frames, name: str = "frames") -> torch.Tensor:
    """Validate a ComfyUI IMAGE batch ``[T, H, W, 3]`` of floats; returned as it is (dtype kept)."""
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor [T,H,W,3] float in 0..1, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [T,H,W,3] (frames, height, width, RGB), got {tuple(frames.shape)}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"{name}: expected at least one frame of at least 1x1 pixels, got {tuple(frames.shape)}")
    if not frames.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor in 0..1, got dtype {frames.dtype}")
    return frames


def _torch_gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


def _np_gen(seed: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, stream])


def _noise_like(frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``frames``' shape, drawn frame after frame from ``gen`` (independent per frame)."""
    return torch.randn(frames.shape, generator=gen, dtype=torch.float32).to(frames.device)


def gaussian_kernel1d(sigma: float, radius: int | None = None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian, length ``2 * radius + 1`` (default radius ``ceil(3 sigma)``)."""
    if radius is None:
        radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur_nchw(x: torch.Tensor, sigma: float, padding: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of ``x [N, C, H, W]``. ``padding``: "reflect" keeps the size, "valid" crops
    ``radius`` pixels on each side."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, dtype=x.dtype).to(x.device)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    if padding == "reflect":
        # reflect padding needs pad < size; fall back to replicate for tiny images
        mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
        x = F.pad(x, (r, r, r, r), mode=mode)
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(x, kx, groups=c)
    return F.conv2d(x, ky, groups=c)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def _from_uint8(arr: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device=like.device, dtype=torch.float32) / 255.0


# ----------------------------------------------------------------------------------------------- tasks
def add_gaussian_noise(frames: torch.Tensor, sigma255: float = 25.0, seed: int = 0) -> torch.Tensor:
    """AWGN: ``I = clip(J + sigma/255 * n)``, ``n ~ N(0, 1)`` i.i.d. per pixel, channel and frame."""
    frames = check_frames(frames)
    if sigma255 < 0:
        raise ValueError(f"strength: expected a noise sigma >= 0 (0..255 scale), got {sigma255}")
    if sigma255 == 0:
        return frames.clone()
    n = _noise_like(frames, _torch_gen(seed))
    return (frames + (sigma255 / 255.0) * n).clamp(0, 1)


def gaussian_blur(frames: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Gaussian blur with reflect padding, same size. ``frames [T,H,W,3]``."""
    frames = check_frames(frames)
    if sigma < 0:
        raise ValueError(f"strength: expected a blur sigma >= 0 pixels, got {sigma}")
    x = frames.permute(0, 3, 1, 2)
    return gaussian_blur_nchw(x, float(sigma)).permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def downscale(frames: torch.Tensor, factor: int, noise_sigma255: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Bicubic antialiased downscale to ``[T, H // factor, W // factor, 3]`` (+ optional AWGN)."""
    frames = check_frames(frames)
    t, h, w, _ = frames.shape
    oh, ow = h // factor, w // factor
    if oh < 1 or ow < 1:
        raise ValueError(f"frames: expected height and width >= {factor} for a x{factor} downscale, got {h}x{w}")
    x = F.interpolate(frames.permute(0, 3, 1, 2), size=(oh, ow), mode="bicubic", antialias=True,
                      align_corners=False)
    out = x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()
    if noise_sigma255 > 0:
        out = add_gaussian_noise(out, noise_sigma255, seed)
    return out


def jpeg(frames: torch.Tensor, quality: int = 20) -> torch.Tensor:
    """Per-frame JPEG (OpenCV, 4:2:0) encode/decode at ``quality`` 1..100."""
    import cv2

    frames = check_frames(frames)
    q = int(round(quality))
    if not 1 <= q <= 100:
        raise ValueError(f"strength: expected a JPEG quality in 1..100, got {quality}")
    arr = _to_uint8(frames)
    out = np.empty_like(arr)
    for i, f in enumerate(arr):
        ok, buf = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a JPEG frame")
        out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return _from_uint8(out, frames)


def video_codec(frames: torch.Tensor, crf: float = 35.0, codec: str = "h264", bitrate: float | None = None,
                fps: float = 24.0) -> torch.Tensor:
    """Encode the whole clip with PyAV (mp4, yuv420p) and decode it back; same frame count and size.

    ``codec``: "h264" (libx264, rate control by ``crf`` 0..51, or ``bitrate`` kbit/s if given) or "mpeg4"
    (``bitrate`` kbit/s, default 200). Odd sizes are edge-padded to even for 4:2:0 and cropped back.
    Single-threaded encoder, so the output is deterministic.
    """
    import av

    frames = check_frames(frames)
    if codec not in VIDEO_CODECS:
        raise ValueError(f"codec: expected one of {sorted(VIDEO_CODECS)}, got {codec!r}")
    if codec == "h264" and bitrate is None and not 0 <= crf <= 51:
        raise ValueError(f"strength: expected an h264 crf in 0..51, got {crf}")
    if bitrate is not None and bitrate <= 0:
        raise ValueError(f"bitrate: expected a positive bitrate in kbit/s, got {bitrate}")
    t, h, w, _ = frames.shape
    arr = _to_uint8(frames)
    ph, pw = h % 2, w % 2
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream(VIDEO_CODECS[codec], rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "h264":
            opts = {"preset": "veryfast", "threads": "1"}
            if bitrate is None:
                opts["crf"] = str(float(crf))
            else:
                stream.bit_rate = int(bitrate * 1000)
            stream.options = opts
        else:
            stream.bit_rate = int((bitrate if bitrate is not None else 200.0) * 1000)
        for f in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buf.seek(0)
    with av.open(buf, mode="r") as inp:
        dec = [fr.to_ndarray(format="rgb24") for fr in inp.decode(video=0)]
    if len(dec) != t:
        raise RuntimeError(f"video codec round trip returned {len(dec)} frames for {t}")
    dec = np.stack(dec)[:, :h, :w]
    return _from_uint8(dec, frames)


def _line_kernel(length: int, angle: float) -> np.ndarray:
    """Anti-aliased line of ``length`` pixels at ``angle`` radians from vertical, peak 1."""
    import cv2

    size = length + 2 + (length + 1) % 2
    k = np.zeros((size * 4, size * 4), np.float32)
    c = size * 2
    dx, dy = math.sin(angle) * (length - 1) * 2, math.cos(angle) * (length - 1) * 2
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0,
             thickness=4, lineType=cv2.LINE_AA)
    k = cv2.resize(k, (size, size), interpolation=cv2.INTER_AREA)
    return k / max(k.max(), 1e-8)


def rain(frames: torch.Tensor, intensity: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Rain streaks falling across the clip, screen-blended: ``I = 1 - (1 - J)(1 - R_t)``.

    Drops get a random position, brightness and speed; all fall along one wind angle (|angle| <= 20 deg from
    vertical, from the seed) by ``speed`` pixels per frame, wrapping around the frame. Each frame's drop
    impulses are convolved with a line kernel of the streak length (motion blur) to form ``R_t``.
    """
    import cv2

    frames = check_frames(frames)
    if not 0 <= intensity <= 1:
        raise ValueError(f"strength: expected a rain intensity in 0..1, got {intensity}")
    if intensity == 0:
        return frames.clone()
    t, h, w, _ = frames.shape
    rng = _np_gen(seed, 1)
    angle = math.radians(rng.uniform(-20.0, 20.0))
    length = max(3, int(round(min(h, w) * rng.uniform(0.08, 0.14))))
    n = max(1, int(round(0.02 * intensity * h * w)))
    pos = rng.uniform(0, 1, size=(n, 2)) * np.array([w, h])
    speed = length * rng.uniform(0.8, 1.6, size=n)
    vel = np.stack([math.sin(angle) * speed, math.cos(angle) * speed], axis=1)
    bright = rng.uniform(0.5, 1.0, size=n)
    kernel = _line_kernel(length, angle)
    opacity = 0.35 + 0.45 * intensity
    layers = np.zeros((t, h, w), np.float32)
    for i in range(t):
        p = np.mod(pos + i * vel, [w, h])
        xi = np.minimum(p[:, 0].astype(np.int64), w - 1)
        yi = np.minimum(p[:, 1].astype(np.int64), h - 1)
        imp = np.zeros((h, w), np.float32)
        np.add.at(imp, (yi, xi), bright)
        layers[i] = cv2.filter2D(imp, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    r = torch.from_numpy(np.clip(layers, 0, 1) * opacity).to(frames.device).unsqueeze(-1)
    return (1 - (1 - frames) * (1 - r)).clamp(0, 1)


def haze_depth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Depth-like map ``[H, W]`` in 0..1: 0.7 * (far at the top) + 0.3 * smooth random relief."""
    import cv2

    rng = _np_gen(seed, 2)
    coarse = rng.uniform(0, 1, size=(4, 6)).astype(np.float32)
    relief = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    relief = (relief - relief.min()) / max(float(relief.max() - relief.min()), 1e-6)
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None]
    return np.clip(0.7 * ramp + 0.3 * relief, 0, 1).astype(np.float32)


def haze(frames: torch.Tensor, beta: float = 1.5, seed: int = 0) -> torch.Tensor:
    """Koschmieder scattering model ``I = J t + A (1 - t)``, ``t = exp(-beta d)``, static depth ``d``."""
    frames = check_frames(frames)
    if beta < 0:
        raise ValueError(f"strength: expected a haze density beta >= 0, got {beta}")
    t, h, w, _ = frames.shape
    rng = _np_gen(seed, 3)
    a = rng.uniform(0.8, 0.95)
    airlight = torch.tensor([a, a, min(1.0, a + rng.uniform(0.0, 0.05))], dtype=torch.float32,
                            device=frames.device)
    d = torch.from_numpy(haze_depth(h, w, seed)).to(frames.device)
    trans = torch.exp(-float(beta) * d)[None, :, :, None]
    return (frames * trans + airlight * (1 - trans)).clamp(0, 1)


def low_light(frames: torch.Tensor, darkness: float = 0.6, seed: int = 0) -> torch.Tensor:
    """Low light: ``I = clip(S + sqrt(k S + r^2) n)``, ``S = gain * J^gamma`` (see module doc for the values)."""
    frames = check_frames(frames)
    if not 0 <= darkness <= 1:
        raise ValueError(f"strength: expected a darkness in 0..1, got {darkness}")
    s = float(darkness)
    gamma, gain = 1 + 1.5 * s, 1 - 0.75 * s
    read, shot = (2 + 6 * s) / 255.0, 0.01 * s
    signal = gain * frames.clamp(0, 1) ** gamma
    n = _noise_like(frames, _torch_gen(seed))
    return (signal + torch.sqrt(shot * signal + read ** 2) * n).clamp(0, 1)


def degrade(frames: torch.Tensor, task: str, strength: float | None = None, seed: int = 0, **params) -> torch.Tensor:
    """Apply the degradation ``task`` (one of ``TASKS``) to ``frames [T,H,W,3]`` in 0..1.

    ``strength=None`` uses ``DEFAULT_STRENGTH[task]``; its meaning per task is in the module docstring.
    ``params``: ``codec``, ``bitrate``, ``fps`` for ``video_codec``; nothing for the others.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    frames = check_frames(frames)
    s = DEFAULT_STRENGTH[task] if strength is None else float(strength)
    allowed = {"video_codec": {"codec", "bitrate", "fps"}}.get(task, set())
    extra = set(params) - allowed
    if extra:
        raise ValueError(f"params: task {task!r} accepts {sorted(allowed) or 'no extra parameters'}, got {sorted(extra)}")
    if task == "denoise":
        return add_gaussian_noise(frames, s, seed)
    if task == "deblur":
        return gaussian_blur(frames, s)
    if task in ("sr_x2", "sr_x4"):
        if s < 0:
            raise ValueError(f"strength: expected a noise sigma >= 0 (0..255 scale), got {s}")
        return downscale(frames, 2 if task == "sr_x2" else 4, s, seed)
    if task == "jpeg":
        return jpeg(frames, s)
    if task == "video_codec":
        return video_codec(frames, crf=s, **params)
    if task == "derain":
        return rain(frames, s, seed)
    if task == "dehaze":
        return haze(frames, s, seed)
    return low_light(frames, s, seed)
