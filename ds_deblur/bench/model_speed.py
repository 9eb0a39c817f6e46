"""Forward and forward+backward time and peak memory of the model presets, with and without activation
checkpointing, run by ``ds-deblur bench model``.

Default shapes are the presets' training shapes (tiny 1x5x64x64, base 1x5x256x256, K=32); ``--shape`` replaces
them for every preset (e.g. to run base on a CPU at a reduced size). Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` above the model's own; on CPU the rise of the process's resident high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs``), which counts every allocator torch uses.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ds_deblur.config import load_config
from ds_deblur.models.presets import PRESETS, build_model

TRAIN_SHAPES = {"tiny": (1, 5, 64, 64, 32), "base": (1, 5, 256, 256, 32), "vrt_gopro": (1, 6, 192, 192, 32)}
MIB = 2 ** 20
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line; CPU peak memory needs Linux")


class PeakMemory:
    """Peak memory (MiB) allocated between ``start()`` and ``stop()`` on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _LIBC.malloc_trim(0)  # hand freed heap back to the OS so the baseline RSS is the live memory
            Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS
            self.base = _status_kib("VmRSS") * 1024

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / MIB
        return (_status_kib("VmHWM") * 1024 - self.base) / MIB


def _median_ms(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(preset: str, shape: tuple[int, ...], device: torch.device, checkpointing: bool,
            repeats: int) -> dict:
    """Build ``preset`` for ``shape`` = (B, T, H, W, K) and time/measure one forward and one training step."""
    b, t, h, w, k = shape
    widths = PRESETS[preset](t, h)["embed_dims"][:4]  # spike widths must equal the VRT stage widths
    cfg = load_config({"DATA": {"ROOT": "unused", "CLIP_LEN": t, "CROP_SIZE": h, "K": k},
                       "MODEL": {"PRESET": preset, "CHANNELS_PER_SCALE": widths,
                                 "VRT": {"USE_CHECKPOINT_ATTN": checkpointing, "USE_CHECKPOINT_FFN": checkpointing}}})
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    blur = torch.rand(b, t, 3, h, w, device=device)
    spike = torch.randn(b, t, k, h, w, device=device)

    def forward() -> None:  # inference
        with torch.no_grad():
            model.eval()(blur, spike)

    def train_step() -> None:
        model.train()(blur, spike).abs().mean().backward()
        model.zero_grad(set_to_none=True)

    row = {"preset": preset, "shape_BTHWK": list(shape), "device": str(device), "checkpointing": checkpointing,
           "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 4), "threads": torch.get_num_threads()}
    peak = PeakMemory(device)
    for name, fn in (("forward", forward), ("forward_backward", train_step)):
        peak.start()
        fn()  # warm-up; also the run whose peak is recorded
        row[f"{name}_peak_MiB"] = round(peak.stop(), 1)
        row[f"{name}_ms"] = round(_median_ms(fn, device, repeats), 1)
    return row
