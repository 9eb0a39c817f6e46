"""Validation metrics: PSNR on RGB and on Y, SSIM on RGB and on Y, a per-frame accumulator reduced across ranks,
and the published evaluation protocol.

Conventions (those of BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel=True``, no border
crop), on images in [0, 1] shaped ``(..., C, H, W)``; every leading index is one frame and values are per frame:

- Y is BT.601 luma as in MATLAB ``rgb2ycbcr``: ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``, in
  [16/255, 235/255]. (The original trainer used the rounded 0.257/0.504/0.098; the difference is below 1e-3.)
- PSNR = ``10 log10(data_range^2 / MSE)`` with MSE floored at ``1e-10 * data_range^2``: identical frames score
  100 dB, a finite value that averages and all-reduces safely, where ``inf`` would swallow a whole mean.
- SSIM (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, "valid" filtering (no padding:
  the SSIM map is (H-10) x (W-10)), averaged over the map; no MATLAB-style downsampling of large images.
  Computed on a single channel (``ssim_y`` and ``ssim_rgb`` take RGB). Frames must be at least 11x11.

Everything is computed in float64 on the input's device.

The published protocol (VRT's ``main_test_vrt.py`` with KAIR's ``calculate_psnr``/``calculate_ssim``/``bgr2ycbcr``,
what the papers built on VRT report): the restored frame as written to disk (clamp to [0, 1], x255, round to
8 bits) against the 8-bit sharp frame, border 0; PSNR and SSIM on RGB (SSIM averaged over the three channels) and
on Y (from the 8-bit frames, not rounded again); the mean over each sequence's frames, then the mean over
sequences (``protocol_scores``, ``sequence_means``). On [0, 1] images holding k/255 values these are the functions
here: PSNR, and SSIM with its constants scaled by the data range, do not change when every value is multiplied by
255. Two deliberate differences: KAIR rounds Y through float32 (changes below 1e-4 dB), and identical frames
score 100 dB here where KAIR gives ``inf``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

PSNR_MSE_FLOOR = 1e-10
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.dim() < 3:
        raise ValueError(f"expected images shaped (..., C, H, W), got {tuple(pred.shape)}")


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> (N, C, H, W) float64."""
    return x.reshape(-1, *x.shape[-3:]).to(torch.float64)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per frame, shape (N,) with N the product of the leading dims; capped at 100 dB."""
    _check_pair(pred, target)
    mse = (_frames(pred) - _frames(target)).square().mean(dim=(1, 2, 3))
    peak = float(data_range) ** 2
    return 10.0 * torch.log10(peak / mse.clamp_min(PSNR_MSE_FLOOR * peak))


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of [0, 1] RGB ``(..., 3, H, W)`` -> ``(..., 1, H, W)`` in [16/255, 235/255]."""
    if img.dim() < 3 or img.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (..., 3, H, W) RGB images, got {tuple(img.shape)}")
    r, g, b = img.unbind(dim=-3)
    return ((16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0).unsqueeze(-3)


def psnr_y(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR on the Y channel of [0, 1] RGB frames, per frame (N,)."""
    return psnr(rgb_to_y(pred.to(torch.float64)), rgb_to_y(target.to(torch.float64)))


def _gaussian_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x * x) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per frame (N,) of single-channel images ``(..., 1, H, W)``."""
    _check_pair(pred, target)
    if pred.shape[-3] != 1:
        raise ValueError(f"ssim works on single-channel (Y) images, got {tuple(pred.shape)}; use ssim_y for RGB")
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(pred.shape[-2:])}")
    x, y = _frames(pred), _frames(target)
    # The 2-D Gaussian is separable: one vertical then one horizontal valid pass over all five moment maps at once.
    g = _gaussian_window(x.device)
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    moments = F.conv2d(moments, g.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    moments = F.conv2d(moments, g.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.unbind(dim=1)
    var_x, var_y, cov = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(-2, -1))


def ssim_y(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM on the Y channel of [0, 1] RGB frames, per frame (N,)."""
    return ssim(rgb_to_y(pred.to(torch.float64)), rgb_to_y(target.to(torch.float64)))


def ssim_rgb(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per frame (N,) of ``(..., C, H, W)`` images: the mean of each channel's SSIM (KAIR's RGB SSIM)."""
    _check_pair(pred, target)
    x, y = _frames(pred), _frames(target)
    n, c = x.shape[:2]
    per_channel = ssim(x.reshape(n * c, 1, *x.shape[2:]), y.reshape(n * c, 1, *y.shape[2:]), data_range)
    return per_channel.view(n, c).mean(dim=1)


PROTOCOL_NAMES = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y")


@torch.no_grad()
def protocol_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The published protocol's four figures for one frame pair ``(3, H, W)`` (or ``(1, 3, H, W)``) in [0, 1]; pass
    the 8-bit frames as written (``k / 255``), as the protocol scores what is on disk."""
    pred, target = pred.reshape(1, *pred.shape[-3:]), target.reshape(1, *target.shape[-3:])
    return {"psnr_rgb": psnr(pred, target).item(), "ssim_rgb": ssim_rgb(pred, target).item(),
            "psnr_y": psnr_y(pred, target).item(), "ssim_y": ssim_y(pred, target).item()}


def sequence_means(frames: list[dict], names: tuple[str, ...] = PROTOCOL_NAMES, prefix: str = "") -> dict:
    """The protocol's averaging of per-frame records ``{"seq", prefix + name, ...}``: ``sequences`` maps each
    sequence (in first-seen order) to its frame count and the mean of each name over its frames; ``overall`` is
    the mean of those per-sequence means over the sequences (every sequence weighs the same, whatever its length)."""
    groups: dict[str, list[dict]] = {}
    for record in frames:
        groups.setdefault(record["seq"], []).append(record)
    sequences = {seq: {"frames": len(records), **{name: _mean([r[prefix + name] for r in records]) for name in names}}
                 for seq, records in groups.items()}
    overall = {name: _mean([values[name] for values in sequences.values()]) for name in names}
    return {"sequences": sequences, "overall": overall}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class MetricSums:
    """Sums of per-frame PSNR (RGB), PSNR (Y) and SSIM (Y) plus the frame count, in one float64 tensor.

    Each rank calls ``update`` on its share of the validation set, then ``all_reduce()`` once, then ``means()``:
    averages are over frames, so ranks holding different numbers of frames are weighted correctly.
    """

    NAMES = ("psnr_rgb", "psnr_y", "ssim_y")

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.sums = torch.zeros(len(self.NAMES) + 1, dtype=torch.float64, device=device)
        self._reduced = False

    @property
    def count(self) -> int:
        """Frames added (on all ranks once reduced)."""
        return int(self.sums[-1].item())

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add the frames of ``pred`` (clamped to [0, 1]) against ``target``, both ``(..., 3, H, W)``."""
        _check_pair(pred, target)
        pred = pred.detach().clamp(0.0, 1.0).reshape(-1, *pred.shape[-3:])
        target = target.detach().reshape(-1, *target.shape[-3:])
        per_frame = []
        # One frame at a time keeps float64 copies of full-resolution clips from piling up on the GPU.
        for p, t in zip(pred.split(1), target.split(1)):
            per_frame.append(torch.cat([psnr(p, t), psnr_y(p, t), ssim_y(p, t), p.new_ones(1, dtype=torch.float64)]))
        if per_frame:
            self.sums += torch.stack(per_frame).sum(dim=0).to(self.sums.device)

    def all_reduce(self) -> "MetricSums":
        """Sum over ranks when torch.distributed is initialised (no-op otherwise). Call once."""
        if self._reduced:
            raise RuntimeError("MetricSums.all_reduce() was already called; a second call would double-count")
        self._reduced = True
        if dist.is_available() and dist.is_initialized():
            # NCCL only reduces CUDA tensors; gloo takes the tensor where it is.
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            buffer = self.sums.to(device) if device is not None else self.sums
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            self.sums.copy_(buffer)
        return self

    def means(self) -> dict[str, float]:
        """Per-frame means ``{"psnr_rgb", "psnr_y", "ssim_y"}``."""
        count = self.sums[-1].item()
        if count == 0:
            raise RuntimeError("MetricSums.means(): no frames were added; call update() before means()")
        return {name: (self.sums[i] / count).item() for i, name in enumerate(self.NAMES)}
