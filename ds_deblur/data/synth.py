"""Synthetic spike-camera deblurring data in the real layout (docs/data.md).

    ds-deblur synth --out DIR [--seed 0 --train-seqs 6 --val-seqs 2 --frames 16
                                              --size 96x96 --spike-size 96x96 --subframes 64 --threshold 1.0
                                              --dark-rate 0.00714 --photons 0 --saturation 0.6 --chroma-detail 0.2
                                              --layout unified|gopro|svrt --report]

``--layout unified`` (the default) writes ``DIR/{train,val}/seq_NNN/{blur,sharp,spike}/NNNNNN.*`` and
``DIR/meta.yaml``. ``--layout gopro`` writes the published GoPro spike release's layout:
``DIR/GOPRO_Large/{train,test}/GOPRnnnn_00_00/{blur,sharp}/NNNNNN.png``,
``DIR/GOPRO_Large_spike_seq/{train,test}/GOPRnnnn_00_00/spike/NNNNNN.dat`` and
``DIR/GOPRO_Large_spike_seq/config.yaml`` (spike_h, spike_w, is_labeled, labeled_data_type), with frame numbers
that do not start at 0 or 1 (sequence i of a split starts at 47 + 40 i, as GoPro's own numbers need not), the
``--val-seqs`` sequences as ``test``, and the card ``DIR/meta.yaml``. ``--layout svrt`` writes the same with the
frames as S-VRT's README lays them out: ``DIR/GOPRO_Large/{train,test}_GT/GOPRnnnn_00_00/NNNNNN.png`` (sharp) and
``DIR/GOPRO_Large/{train,test}_GT_blurred/GOPRnnnn_00_00/NNNNNN.png`` (blurry). All layouts hold the same pixels
and spikes for the same arguments; only the names differ. ``--report`` then prints what the validation spikes tell
on their own (``ds_deblur.data.spike_quality``).

Each sequence is a procedural scene: a textured background seen by a moving camera and several textured
objects, each on its own path; textures have the colour statistics of natural images (``--saturation``,
``--chroma-detail``: muted colour, fine detail mostly grey). Exposure f spans time [f, f+1) (exposures are back to
back) and is rendered at S sub-frames, at times f + (i + 0.5) / S. blur = mean of the S sub-frames; sharp = the
scene at the exposure's centre f + 0.5 (the middle sub-frame when S is odd). The spike stream is an
integrate-and-fire model of the spike camera with one spike frame per sub-frame (S = 64, as the GoPro spike
release): each pixel's accumulator starts uniform in [0, TH), adds the sub-frame's grey intensity (in [0, 1]; with
``--photons`` a Poisson count of photo-electrons), fires when it reaches TH and then subtracts TH; accumulators
carry over from one exposure to the next; a pixel also fires spuriously with probability ``--dark-rate`` per spike
frame. TH 1 makes white fire at every spike frame, the most a real camera reads out. With a spike size smaller than
the RGB size the sensor sees the area-downsampled intensity. The same arguments give the same bytes;
``SynthConfig.first_generator()`` (``--subframes 32 --threshold 2 --dark-rate 0 --saturation 1 --chroma-detail 1``)
gives the first generator's data.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw

from .images import GREY
from .layout import META_FILE, SPIKE_DIR
from .roots import RELEASE_CONFIG, RELEASE_FRAMES, RELEASE_SPIKES, SVRT_BLUR, SVRT_SHARP, VALIDATION_SPLIT, fill_split
from .spike_io import write_dat
from .spike_quality import measure, table

LAYOUTS = ("unified", "gopro", "svrt")
CHROMA_SIGMA = 3.0  # Gaussian, in pixels at a 96-pixel frame (scaled with it): finer colour is "detail"


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    train_seqs: int = 6
    val_seqs: int = 2
    frames: int = 16
    size: tuple[int, int] = (96, 96)
    spike_size: Optional[tuple[int, int]] = None  # None = size
    subframes: int = 64  # spike frames per exposure, as in the GoPro spike release
    # White (intensity 1) fires about once per spike frame, the most a real camera reads out (the published GoPro
    # spike simulator's sensor constants give 0.99 per frame against its threshold).
    threshold: float = 1.0
    # Spurious spikes per pixel and spike frame: the real sensor's inherent noise (the same simulator: one in
    # about 140 pixel-frames). 0 = none.
    dark_rate: float = 1 / 140
    # Photo-electrons per spike frame at white intensity, for Poisson shot noise; 0 = none (the real sensor
    # integrates ~10^5 electrons per threshold: shot noise far below the 1-bit quantisation).
    photons: float = 0.0
    # Scene colour. Natural scenes are far less colourful than independent random channels and put their fine
    # detail on the grey axis (photographs: ~90% of the detail energy; random channels: 30%). ``saturation``
    # scales every texture's colour (its difference from grey), ``chroma_detail`` further scales the colour
    # finer than CHROMA_SIGMA. 1.0 and 1.0 = the independent colour channels of the first generator.
    saturation: float = 0.6
    chroma_detail: float = 0.2
    # Speeds in pixels per exposure at a 96-pixel frame (scaled with the frame size).
    camera_speed: tuple[float, float] = (6.0, 12.0)
    object_speed: tuple[float, float] = (8.0, 16.0)
    objects: tuple[int, int] = (3, 5)

    def sensor_size(self) -> tuple[int, int]:
        return tuple(self.spike_size or self.size)

    @classmethod
    def first_generator(cls, **changes: Any) -> "SynthConfig":
        """The first generator's camera and scenes (32 spike frames per exposure at threshold 2, no noise,
        independent colour channels) with ``changes``: the bytes the tests written for it expect."""
        return cls(**{**FIRST_GENERATOR, **changes})


FIRST_GENERATOR = dict(subframes=32, threshold=2.0, dark_rate=0.0, photons=0.0, saturation=1.0, chroma_detail=1.0)


def _reflect(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold ``x`` into [lo, hi] like a ball bouncing between walls."""
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


class _Trajectory:
    """A smooth 2-D trajectory (drift plus a wobble) folded into a box: position in pixels at time t."""

    def __init__(self, rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], speed: float) -> None:
        self.lo, self.hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        angle = rng.uniform(0, 2 * np.pi)
        self.start = rng.uniform(self.lo, self.hi)
        self.velocity = speed * np.array([np.sin(angle), np.cos(angle)])
        self.wobble = rng.uniform(0.3, 1.0, 2) * speed
        self.omega = rng.uniform(0.3, 1.2, 2)
        self.phase = rng.uniform(0, 2 * np.pi, 2)

    def __call__(self, t: float) -> np.ndarray:
        x = self.start + self.velocity * t + self.wobble * np.sin(self.omega * t + self.phase)
        return _reflect(x, self.lo, self.hi)


def _shifted(texture: np.ndarray, y: float, x: float, height: int, width: int) -> np.ndarray:
    """The (height, width) window of ``texture`` at fractional offset (y, x), bilinear."""
    iy, ix = int(np.floor(y)), int(np.floor(x))
    fy, fx = np.float32(y - iy), np.float32(x - ix)
    win = texture[iy:iy + height + 1, ix:ix + width + 1]
    top = win[:-1, :-1] * (1 - fx) + win[:-1, 1:] * fx
    bottom = win[1:, :-1] * (1 - fx) + win[1:, 1:] * fx
    return top * (1 - fy) + bottom * fy


def _noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth colour noise (height, width, 3) with about ``cells`` blobs across the shorter side."""
    grid = torch.from_numpy(rng.random((1, 3, cells + 3, cells * width // height + 3), dtype=np.float32))
    up = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return up[0].permute(1, 2, 0).numpy()


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A background: multi-scale colour noise with sharp-edged shapes and stripes painted over it."""
    base = sum(w * _noise(rng, height, width, c) for w, c in ((0.5, 3), (0.3, 9), (0.2, 27)))
    img = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    scale = min(height, width)
    for _ in range(int(rng.integers(12, 20))):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.03, 0.12) * scale
        colour = tuple(int(c) for c in rng.integers(10, 246, 3))
        box = [x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r * rng.uniform(0.5, 1.5)]
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    for _ in range(int(rng.integers(4, 8))):
        pts = rng.uniform(0, 1, 4) * [width, height, width, height]
        draw.line(list(pts), fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    return np.asarray(img, np.float32) / 255.0


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, C) blurred by a Gaussian of ``sigma`` pixels (edges replicated)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    row = (taps / taps.sum()).view(1, 1, 1, -1).repeat(image.shape[2], 1, 1, 1)  # one kernel per channel
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), row, groups=image.shape[2])
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), row.transpose(2, 3), groups=image.shape[2])
    return x[0].permute(1, 2, 0).numpy()


def _natural_colour(rgb: np.ndarray, cfg: SynthConfig, sigma: float) -> np.ndarray:
    """``rgb`` with its colour (its difference from BT.601 grey) scaled by ``cfg.saturation`` and the part of
    it finer than ``sigma`` pixels by ``cfg.chroma_detail`` as well; grey unchanged. Both 1 return ``rgb``."""
    if cfg.saturation == 1.0 and cfg.chroma_detail == 1.0:
        return rgb
    grey = (rgb @ GREY)[..., None]
    colour = rgb - grey
    coarse = _gaussian_blur(colour, sigma)
    colour = cfg.saturation * (coarse + cfg.chroma_detail * (colour - coarse))
    return np.clip(grey + colour, 0, 1).astype(np.float32)


def _sprite(rng: np.random.Generator, size: int, cfg: SynthConfig, sigma: float) -> np.ndarray:
    """An object: premultiplied RGBA, an anti-aliased shape with a striped or checked texture, padded with
    transparent rows/columns (one before, two after) so ``_paste`` can shift it by sub-pixel amounts."""
    ss = 4  # supersampling of the shape's edge
    mask = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(mask)
    full = size * ss - 1
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse([0, 0, full, full], fill=255)
    elif kind == 1:
        inset = rng.uniform(0, 0.3, 2) * full
        draw.rectangle([inset[0], inset[1], full - inset[0], full - inset[1]], fill=255)
    else:
        draw.polygon([tuple(p) for p in rng.uniform(0, full, (int(rng.integers(3, 6)), 2))], fill=255)
    alpha = np.asarray(mask.resize((size, size), Image.BOX), np.float32) / 255.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(3, 8)
    angle = rng.uniform(0, np.pi)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
    pattern = (np.floor(phase) % 2) if rng.random() < 0.5 else (np.floor(xx / period) + np.floor(yy / period)) % 2
    colours = rng.uniform(0.05, 0.95, (2, 3)).astype(np.float32)
    rgb = colours[0] * (1 - pattern[..., None]) + colours[1] * pattern[..., None]
    rgb = _natural_colour(np.clip(rgb * (0.85 + 0.3 * _noise(rng, size, size, 4)), 0, 1), cfg, sigma)
    rgba = np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=2)
    return np.pad(rgba, ((1, 2), (1, 2), (0, 0)))


class Scene:
    """A procedural scene; ``render(t)`` gives the (H, W, 3) float32 image in [0, 1] at time t (in exposures)."""

    def __init__(self, rng: np.random.Generator, cfg: SynthConfig) -> None:
        self.height, self.width = cfg.size
        scale = min(cfg.size) / 96.0
        self.margin = int(np.ceil(cfg.camera_speed[1] * scale * 4)) + 2
        sigma = CHROMA_SIGMA * scale
        texture = _texture(rng, self.height + 2 * self.margin + 1, self.width + 2 * self.margin + 1)
        self.background = _natural_colour(texture, cfg, sigma)
        self.camera = _Trajectory(rng, [0, 0], [2 * self.margin] * 2, rng.uniform(*cfg.camera_speed) * scale)
        self.objects = []
        for _ in range(int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))):
            size = int(rng.uniform(0.2, 0.45) * min(cfg.size))
            lo, hi = [-size / 3] * 2, [self.height - 2 * size / 3, self.width - 2 * size / 3]
            sprite = _sprite(rng, size, cfg, sigma)  # before the path: the seed's draws stay in their order
            self.objects.append((sprite, _Trajectory(rng, lo, hi, rng.uniform(*cfg.object_speed) * scale)))

    def render(self, t: float) -> np.ndarray:
        cy, cx = self.camera(t)
        frame = _shifted(self.background, cy, cx, self.height, self.width)
        for sprite, path in self.objects:
            self._paste(frame, sprite, *path(t))
        return frame

    def _paste(self, frame: np.ndarray, sprite: np.ndarray, y: float, x: float) -> None:
        """Composite ``sprite`` (premultiplied) with its top-left corner at fractional (y, x)."""
        iy, ix = int(np.floor(y)), int(np.floor(x))
        size = sprite.shape[0] - 2  # the shape plus the one row/column its fractional shift spills into
        # Moving down/right by a fraction f means sampling the sprite at -f, i.e. at 1 - f in the padded sprite.
        shifted = _shifted(sprite, 1 - (y - iy), 1 - (x - ix), size, size)
        y0, x0 = max(iy, 0), max(ix, 0)
        y1, x1 = min(iy + size, self.height), min(ix + size, self.width)
        if y0 >= y1 or x0 >= x1:
            return
        part = shifted[y0 - iy:y1 - iy, x0 - ix:x1 - ix]
        region = frame[y0:y1, x0:x1]
        region *= 1 - part[..., 3:]
        region += part[..., :3]


class SpikeSensor:
    """Integrate-and-fire spike camera: one binary spike frame per ``expose`` call.

    Each pixel adds its grey intensity per spike frame (with ``photons`` > 0: a Poisson count of that many
    photo-electrons at white, so shot noise) and fires when the sum reaches ``threshold``, which it then
    subtracts (a self-resetting pixel: what it integrated past the threshold carries over). With ``dark_rate`` > 0
    a pixel also fires spuriously with that probability per frame, whatever it integrated (the sensor's inherent
    noise, independent of the light).
    """

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], threshold: float, dark_rate: float = 0.0,
                 photons: float = 0.0) -> None:
        self.size, self.threshold = size, threshold
        self.rng, self.dark_rate, self.photons = rng, dark_rate, photons
        self.accumulator = rng.uniform(0, threshold, size).astype(np.float32)

    def expose(self, rgb: np.ndarray) -> np.ndarray:
        grey = rgb @ GREY
        if grey.shape != self.size:
            grey = np.asarray(Image.fromarray(grey, mode="F").resize(self.size[::-1], Image.BOX))
        if self.photons > 0:
            grey = (self.rng.poisson(np.clip(grey, 0, None) * self.photons) / self.photons).astype(np.float32)
        self.accumulator += grey
        fired = self.accumulator >= self.threshold
        self.accumulator[fired] -= self.threshold
        if self.dark_rate > 0:
            fired |= self.rng.random(self.size) < self.dark_rate
        return fired


@dataclass(frozen=True)
class SequenceFolders:
    """Where one sequence goes: its blurry and sharp PNGs, and the folder of its ``spike/`` folder."""
    blur: Path
    sharp: Path
    spikes: Path


def render_sequence(folders: SequenceFolders, rng: np.random.Generator, cfg: SynthConfig, first: int = 0) -> None:
    """Render one sequence's blur/sharp PNGs and its spike .dat files into ``folders``, numbering frames from
    ``first``."""
    for folder in (folders.blur, folders.sharp, folders.spikes / SPIKE_DIR):
        folder.mkdir(parents=True)
    scene = Scene(rng, cfg)
    sensor = SpikeSensor(rng, cfg.sensor_size(), cfg.threshold, cfg.dark_rate, cfg.photons)
    steps = (np.arange(cfg.subframes) + 0.5) / cfg.subframes
    for f in range(cfg.frames):
        blur = np.zeros((*cfg.size, 3), np.float32)
        spikes = np.empty((cfg.subframes, *cfg.sensor_size()), bool)
        for i, dt in enumerate(steps):
            sub = scene.render(f + dt)
            blur += sub
            spikes[i] = sensor.expose(sub)
        name = f"{first + f:06d}"
        _save_png(folders.blur / f"{name}.png", blur / cfg.subframes)
        _save_png(folders.sharp / f"{name}.png", scene.render(f + 0.5))
        write_dat(folders.spikes / SPIKE_DIR / f"{name}.dat", spikes)


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


def generate(out: str | Path, cfg: SynthConfig = SynthConfig(), layout: str = "unified") -> Path:
    """Write a synthetic dataset in ``layout`` (``unified``, ``gopro`` or ``svrt``, see the module doc) to ``out``
    (which must not exist or be empty); returns its path."""
    out = Path(out)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out folder or delete it first")
    for split_id, (split, count) in enumerate((("train", cfg.train_seqs), ("val", cfg.val_seqs))):
        for s in range(count):
            # Each sequence's RNG depends only on (seed, split, index): adding sequences leaves the others alone,
            # and both layouts hold the same data.
            rng = np.random.default_rng([cfg.seed, split_id, s])
            render_sequence(_sequence_folders(out, layout, split, split_id, s), rng, cfg,
                            first=0 if layout == "unified" else 47 + 40 * s)
    _write_meta(out, cfg, layout)
    return out


def _sequence_folders(out: Path, layout: str, split: str, split_id: int, index: int) -> SequenceFolders:
    """The folders of sequence ``index`` of ``split`` in ``layout``: ``seq_NNN`` in the unified layout,
    GoPro-like names (``val`` as ``test``) in the release's and S-VRT's."""
    if layout == "unified":
        seq = out / split / f"seq_{index:03d}"
        return SequenceFolders(seq / "blur", seq / "sharp", seq)
    split, name = VALIDATION_SPLIT if split == "val" else split, f"GOPR{372 + 100 * split_id + index:04d}_00_00"
    spikes = out / RELEASE_SPIKES / split / name
    if layout == "gopro":
        seq = out / RELEASE_FRAMES / split / name
        return SequenceFolders(seq / "blur", seq / "sharp", spikes)
    frames = out / RELEASE_FRAMES
    return SequenceFolders(fill_split(str(frames / SVRT_BLUR), split) / name,
                           fill_split(str(frames / SVRT_SHARP), split) / name, spikes)


def _write_meta(out: Path, cfg: SynthConfig, layout: str) -> None:
    val = "val" if layout == "unified" else VALIDATION_SPLIT
    card = {
        "generator": "ds_deblur.data.synth",
        "seed": cfg.seed,
        "rgb_size": list(cfg.size),
        "spike_size": list(cfg.sensor_size()),
        "threshold": cfg.threshold,
        "subframes": cfg.subframes,
        "spike_frames_per_exposure": cfg.subframes,
        "splits": {"train": {"sequences": cfg.train_seqs, "frames_per_sequence": cfg.frames},
                   val: {"sequences": cfg.val_seqs, "frames_per_sequence": cfg.frames}},
        "blur": "mean of the exposure's sub-frames",
        "sharp": "scene at the exposure centre",
        "spike_model": "integrate-and-fire on BT.601 grey, accumulator uniform in [0, threshold) at start",
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
    }
    if layout != "unified":
        card["layout"] = layout
        # The release's own description of its spike streams, with this dataset's sensor size.
        height, width = cfg.sensor_size()
        release = {"spike_h": height, "spike_w": width, "is_labeled": False, "labeled_data_type": [0]}
        (out / RELEASE_SPIKES / RELEASE_CONFIG).write_text(yaml.safe_dump(release, sort_keys=False))
    (out / META_FILE).write_text(yaml.safe_dump(card, sort_keys=False))


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 96x96, got {text!r}") from None
    if height < 8 or width < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return height, width


def main(argv: Optional[Sequence[str]] = None) -> int:
    d = SynthConfig()
    parser = argparse.ArgumentParser(prog="ds-deblur synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="new dataset root")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--train-seqs", type=int, default=d.train_seqs)
    parser.add_argument("--val-seqs", type=int, default=d.val_seqs)
    parser.add_argument("--frames", type=int, default=d.frames, help="blurry frames per sequence")
    parser.add_argument("--size", type=_size, default=d.size, help="RGB frame size HxW")
    parser.add_argument("--spike-size", type=_size, default=None, help="spike sensor size HxW (default: --size)")
    parser.add_argument("--subframes", type=int, default=d.subframes, help="sub-frames (= spike frames) per exposure")
    parser.add_argument("--threshold", type=float, default=d.threshold,
                        help="integrate-and-fire threshold (white intensity adds 1 per spike frame)")
    parser.add_argument("--dark-rate", type=float, default=d.dark_rate,
                        help="spurious spikes per pixel and spike frame (0: none)")
    parser.add_argument("--photons", type=float, default=d.photons,
                        help="photo-electrons per spike frame at white, for shot noise (0: none)")
    parser.add_argument("--saturation", type=float, default=d.saturation,
                        help="scale of the scenes' colour (1: independent random colour channels)")
    parser.add_argument("--chroma-detail", type=float, default=d.chroma_detail,
                        help="further scale of the colour finer than a few pixels (1: as coarse colour)")
    parser.add_argument("--report", action="store_true",
                        help="then print what the validation spikes tell on their own (ds_deblur.data.spike_quality)")
    parser.add_argument("--layout", choices=LAYOUTS, default="unified",
                        help="unified: ROOT/{train,val}/SEQ/...; gopro: the GoPro spike release's folders "
                             "(GOPRO_Large, GOPRO_Large_spike_seq with config.yaml; --val-seqs become 'test'); "
                             "svrt: the same with S-VRT's frame folders GOPRO_Large/{train,test}_GT[_blurred]/SEQ")
    args = parser.parse_args(argv)
    if args.spike_size and (args.spike_size[0] > args.size[0] or args.spike_size[1] > args.size[1]):
        parser.error(f"--spike-size {args.spike_size} must not exceed --size {args.size}")
    if min(args.frames, args.subframes, args.train_seqs + args.val_seqs) < 1 or args.threshold <= 0:
        parser.error("--frames, --subframes and the sequence count must be >= 1 and --threshold > 0")
    if not 0 <= args.dark_rate <= 1 or min(args.photons, args.saturation, args.chroma_detail) < 0:
        parser.error("--dark-rate must be in [0, 1]; --photons, --saturation and --chroma-detail >= 0")
    cfg = SynthConfig(seed=args.seed, train_seqs=args.train_seqs, val_seqs=args.val_seqs, frames=args.frames,
                      size=args.size, spike_size=args.spike_size, subframes=args.subframes, threshold=args.threshold,
                      dark_rate=args.dark_rate, photons=args.photons, saturation=args.saturation,
                      chroma_detail=args.chroma_detail)
    try:
        root = generate(args.out, cfg, args.layout)
    except FileExistsError as err:
        print(f"[synth] error: {err}", file=sys.stderr)
        return 1
    val = "val" if args.layout == "unified" else VALIDATION_SPLIT
    print(f"[synth] wrote {cfg.train_seqs} train + {cfg.val_seqs} {val} sequences of {cfg.frames} frames "
          f"({cfg.size[0]}x{cfg.size[1]} RGB, {cfg.sensor_size()[0]}x{cfg.sensor_size()[1]} spikes) to {root} "
          f"({args.layout} layout)")
    if args.report and cfg.val_seqs:
        print(table(measure(root, "val")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
