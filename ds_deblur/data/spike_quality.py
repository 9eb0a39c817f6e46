"""What a dataset's spike streams tell on their own, before any learning.

    ds-deblur spike-quality ROOT [--split val] [--windows 4 8 16 32 64] [--threshold TH]
                                                [--out FILE.json]

The plainest spike reconstruction, texture from playback (TFP): the spikes a pixel fired in a window of W spike
frames around the exposure centre, times the threshold, over W, estimate its grey intensity at the centre, the
instant the sharp frame shows. Each estimate is scored against the sharp frame's grey (BT.601, [0, 1], PSNR with
peak 1), beside the blurry frame's grey. Short windows are noisy (a pixel's count is an integer), long ones
blurred by the motion: the best W says how much sharper than the blurry frame the spikes see.

Two RGB lines say how much of the blur a grey sensor can see at all: the blurry frame, and the blurry frame with
its grey replaced by the sharp frame's (colour left blurred) — the most any per-pixel grey correction can gain;
and the share of the sharp frames' detail energy (a frame minus its 4x-downsampled copy) on the grey axis
(R = G = B): natural photographs hold about nine tenths of their detail there.

The threshold comes from ``--threshold``, else the dataset card (``meta.yaml``, written by ``synth``), else it is
fitted so that the whole exposure's spike rate matches the blurry frames' grey (least squares; a real camera's
data has no card). With a sensor smaller than the frames, grey images are area-downsampled to the sensor size.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ds_deblur.errors import DatasetError

from .images import GREY
from .layout import scan_split
from .roots import open_layout, read_meta
from .spike_io import read_dat

WINDOWS = (4, 8, 16, 32, 64)


def tfp(spikes: np.ndarray, window: int, threshold: float) -> np.ndarray:
    """Grey estimate (H, W) in [0, 1] from the ``window`` spike frames around the centre of ``spikes`` (N, H, W)."""
    centre = spikes.shape[0] // 2
    start = max(0, centre - window // 2)
    part = spikes[start:start + window]
    return np.clip(part.sum(axis=0, dtype=np.float64) * threshold / part.shape[0], 0, 1)


def grey_of(path: Path, sensor: tuple[int, int]) -> np.ndarray:
    """BT.601 grey of an RGB frame in [0, 1], area-downsampled to ``sensor`` (H, W) when it is larger."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    grey = rgb @ GREY
    if grey.shape != sensor:
        grey = np.asarray(Image.fromarray(grey, mode="F").resize(sensor[::-1], Image.BOX))
    return grey.astype(np.float64)


def psnr(estimate: np.ndarray, target: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((estimate - target) ** 2), 1e-10)))


def _rgb_scores(blur_path: Path, sharp_path: Path) -> tuple[float, float]:
    """RGB PSNR of the blurry frame, and of the blurry frame with the sharp frame's grey."""
    blur = np.asarray(Image.open(blur_path).convert("RGB"), np.float64) / 255
    sharp = np.asarray(Image.open(sharp_path).convert("RGB"), np.float64) / 255
    regreyed = np.clip(blur + ((sharp - blur) @ GREY)[..., None], 0, 1)
    return psnr(blur, sharp), psnr(regreyed, sharp)


def detail_energy(path: Path) -> tuple[float, float]:
    """An RGB image's detail energy (the image minus its 4x area-downsampled, bilinearly upsampled copy) on the grey
    axis R = G = B, and in all."""
    image = Image.open(path).convert("RGB")
    coarse = image.resize((max(1, image.width // 4), max(1, image.height // 4)), Image.BOX)
    detail = (np.asarray(image, np.float64) - np.asarray(coarse.resize(image.size, Image.BILINEAR), np.float64)) / 255
    return float((detail.sum(axis=-1) ** 2).sum() / 3), float((detail ** 2).sum())


def fitted_threshold(frames: Sequence[tuple[Path, np.ndarray]], sensor: tuple[int, int]) -> float:
    """Least-squares threshold that maps each exposure's spike rate onto its blurry frame's grey."""
    num = den = 0.0
    for blur_path, spikes in frames:
        rate = spikes.mean(axis=0, dtype=np.float64)
        num += float((rate * grey_of(blur_path, sensor)).sum())
        den += float((rate * rate).sum())
    if den == 0:
        raise DatasetError("no spikes at all in the split: the threshold cannot be fitted; pass --threshold")
    return num / den


def measure(root: Path, split: str = "val", windows: Sequence[int] = WINDOWS,
            threshold: Optional[float] = None) -> dict:
    """Mean scores over every frame of ``split`` (see the module doc), with the threshold used and its source."""
    layout = open_layout(root)
    sensor = layout.spike_size()
    scan = scan_split(layout, split, sensor, k=1)
    scan.raise_if_bad()
    frames = [(seq.blur(i), seq.sharp(i), read_dat(seq.spike(i), sensor))
              for seq in scan.sequences for i in range(len(seq.frames))]
    source = "--threshold"
    if threshold is None:
        threshold, source = read_meta(layout.root).get("threshold"), "meta.yaml"
    if threshold is None:
        threshold, source = fitted_threshold([(b, s) for b, _, s in frames], sensor), "fitted to the blurry frames"
    spike_frames = min(s.shape[0] for _, _, s in frames)
    windows = [w for w in windows if w <= spike_frames]
    scores: dict[str, list[float]] = {"blur_grey": [], "blur_rgb": [], "blur_rgb_sharp_grey": []}
    energy = np.zeros(2)
    scores.update({f"tfp_{w}": [] for w in windows})
    for blur_path, sharp_path, spikes in frames:
        sharp = grey_of(sharp_path, sensor)
        scores["blur_grey"].append(psnr(grey_of(blur_path, sensor), sharp))
        for w in windows:
            scores[f"tfp_{w}"].append(psnr(tfp(spikes, w, threshold), sharp))
        rgb = _rgb_scores(blur_path, sharp_path)
        scores["blur_rgb"].append(rgb[0])
        scores["blur_rgb_sharp_grey"].append(rgb[1])
        energy += detail_energy(sharp_path)
    return {"root": str(root), "split": scan.split, "frames": len(frames), "spike_frames": spike_frames,
            "sensor": list(sensor), "threshold": float(threshold), "threshold_source": source,
            "windows": windows, "psnr": {name: float(np.mean(v)) for name, v in scores.items()},
            "sharp_detail_grey_share": float(energy[0] / energy[1])}


def table(results: dict) -> str:
    p = results["psnr"]
    lines = [f"{results['root']} ({results['split']}, {results['frames']} frames, {results['spike_frames']} spike "
             f"frames per exposure, threshold {results['threshold']:.4g} from {results['threshold_source']})",
             "grey PSNR against the sharp frame's grey:",
             f"  blurry frame                  {p['blur_grey']:6.2f} dB"]
    for w in results["windows"]:
        gain = p[f"tfp_{w}"] - p["blur_grey"]
        lines.append(f"  TFP, middle {w:2d} spike frames  {p[f'tfp_{w}']:6.2f} dB  ({gain:+.2f} over the blurry frame)")
    lines += ["RGB PSNR against the sharp frame:",
              f"  blurry frame                  {p['blur_rgb']:6.2f} dB",
              f"  blurry frame, sharp grey      {p['blur_rgb_sharp_grey']:6.2f} dB  "
              f"(the most a per-pixel grey correction gains: {p['blur_rgb_sharp_grey'] - p['blur_rgb']:+.2f})",
              f"share of the sharp frames' detail energy on the grey axis: {results['sharp_detail_grey_share']:.0%}"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ds-deblur spike-quality",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="dataset root (either layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS), help="TFP window sizes (spike frames)")
    parser.add_argument("--threshold", type=float, help="spike threshold (default: meta.yaml's, else fitted)")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    try:
        results = measure(args.root, args.split, args.windows, args.threshold)
    except DatasetError as err:
        print(f"[spike_quality] error: {err}", file=sys.stderr)
        return 1
    print(table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
