"""Data pipeline throughput (a measurement, not a test), run by ``ds-deblur bench data``.

Generates two synthetic datasets in a temporary folder (or ``--work-dir``): ``tiny`` at 96x96 RGB with 96x96
spikes (unified layout), and ``base`` at the real GoPro spike size in the release's layout: 720x1280 RGB frames,
360x640 spike streams of 64 spike frames per exposure. For each it times the training loader (batch 1, CLIP_LEN
5; crop 64 for tiny, 256 for base, as the base preset trains) for each spike representation (``REPRS``: the voxel
grid, K 32, for both; at base also S-VRT's TFP, 4 images of half window 20, and its raw window of 21 frames),
reading ``.dat`` files and the prepared files (voxel cache, S-VRT's artifacts), with each worker count (persistent
workers, as training keeps them), and reports clips/s, the bytes the loader read per clip (measured: the
process's ``rchar`` with 0 workers) and the bytes of the files a clip's frames are stored in. It also reports
``.dat`` -> voxel speed in MB/s of ``.dat`` read for full-size 360x640 and 250x400 streams.
"""
from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ds_deblur.config import Config, load_config
from ds_deblur.data.dataset import SpikeDeblurDataset
from ds_deblur.data.layout import SequenceInfo
from ds_deblur.data.loader import build_dataloaders
from ds_deblur.data.prepare import prepare, prepare_representation
from ds_deblur.data.representations import SpikeRepr, artifact_dir, artifact_path
from ds_deblur.data.roots import open_layout
from ds_deblur.data.spike_io import write_dat
from ds_deblur.data.synth import SynthConfig, generate
from ds_deblur.data.voxel import voxelize_dat

K, CLIP_LEN = 32, 5
# representation: the DATA keys that choose it
REPRS = {
    "voxel": {"SPIKE_REPR": "voxel", "K": K},
    "tfp": {"SPIKE_REPR": "tfp", "K": 4, "TFP_HALF_WIN_LENGTH": 20},
    "raw_window": {"SPIKE_REPR": "raw_window", "RAW_WINDOW_LENGTH": 21},
}
# name: (generator settings, layout, training crop, representations timed)
SHAPES = {
    "tiny": (SynthConfig(seed=0, train_seqs=2, val_seqs=1, frames=12), "unified", 64, ("voxel",)),
    "base": (SynthConfig(seed=0, train_seqs=2, val_seqs=1, frames=10, size=(720, 1280), spike_size=(360, 640),
                         subframes=64), "gopro", 256, tuple(REPRS)),
}


def read_bytes_so_far() -> Optional[int]:
    """Bytes this process has read through read() calls (Linux ``/proc/self/io`` rchar), or None elsewhere."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def loader_config(root: Path, crop: int, workers: int, cache: bool, representation: str = "voxel") -> Config:
    """The training loader's config for ``representation`` (a key of ``REPRS``); ``cache`` reads the voxel cache
    (S-VRT's artifacts are read wherever a sequence has their folder: ``use_artifacts``)."""
    data = {"ROOT": str(root), "CLIP_LEN": CLIP_LEN, "CROP_SIZE": crop, **REPRS[representation],
            "USE_PRECOMPUTED_VOXELS": cache and representation == "voxel"}
    return load_config({"DATA": data, "DATALOADER": {"NUM_WORKERS": workers, "PERSISTENT_WORKERS": True}})


def spike_repr(representation: str) -> Optional[SpikeRepr]:
    """What the loader makes of ``REPRS[representation]``'s keys; None for the voxel."""
    if representation == "voxel":
        return None
    return SpikeRepr.from_config(load_config({"DATA": {"ROOT": "-", **REPRS[representation]}}).DATA)


def use_artifacts(root: Path, representation: str, present: bool) -> None:
    """Prepare S-VRT's artifacts of ``representation`` for the training split (``present``), or delete them so that
    the loader computes it from the ``.dat`` files. Nothing for the voxel, whose cache a key chooses."""
    spec = spike_repr(representation)
    if spec is None:
        return
    if present:
        prepare_representation(root, spec, splits=("train",))
        return
    for seq in open_layout(root).sequences("train"):
        shutil.rmtree(artifact_dir(seq.spikes, spec), ignore_errors=True)


def stored_stream(representation: str, cache: bool) -> Callable[[SequenceInfo, int], Path]:
    """The file the loader reads frame ``i``'s spikes from: its ``.dat``, or with ``cache`` its voxel cache file or
    artifact."""
    spec = spike_repr(representation)
    if not cache:
        return lambda seq, i: seq.spike(i)
    if spec is None:
        return lambda seq, i: seq.voxel(i)
    return lambda seq, i: artifact_path(seq.spike_path, spec, seq.frames[i])


def time_loader(root: Path, crop: int, workers: int, cache: bool, batches: int, warmup: int = 3,
                representation: str = "voxel") -> tuple[list[float], Optional[float], SpikeDeblurDataset]:
    """Seconds for each of ``batches`` consecutive training batches (after ``warmup`` untimed ones), the bytes
    read per clip over the timed batches (0 workers only: workers read in other processes), and the dataset.
    ``cache``: from the prepared files (voxel cache, S-VRT's artifacts), else from the ``.dat`` files."""
    use_artifacts(root, representation, cache)
    cfg = loader_config(root, crop, workers, cache, representation)
    loader = build_dataloaders(cfg, num_workers=workers)[0]
    times: list[float] = []
    epoch, read_before = 0, None
    while len(times) < batches:
        loader.set_epoch(epoch)
        last = time.perf_counter()
        for i, _ in enumerate(loader):
            now = time.perf_counter()
            if i >= warmup or epoch > 0:
                times.append(now - last)
            elif i == warmup - 1:
                read_before = read_bytes_so_far()
            last = now
            if len(times) == batches:
                break
        epoch += 1
    read_after = read_bytes_so_far()
    per_clip = None
    if workers == 0 and read_before is not None and read_after is not None:
        per_clip = (read_after - read_before) / (batches * cfg.TRAIN.BATCH_SIZE)
    return times, per_clip, loader.dataset


def file_bytes_per_clip(dataset: SpikeDeblurDataset, stream: Callable[[SequenceInfo, int], Path]) -> float:
    """Mean bytes of the files a training clip's frames are stored in (blur, sharp, and ``stream``: the spike
    stream, voxel cache or artifact; see ``stored_stream``): what a loader that reads whole files would read."""
    total = 0
    for seq_index, start in dataset.clips:
        seq = dataset.sequences[seq_index]
        for i in range(start, start + dataset.options.clip_len):
            total += sum(os.path.getsize(p) for p in (seq.blur(i), seq.sharp(i), stream(seq, i)))
    return total / len(dataset.clips)


def time_voxelize(folder: Path, spike_size: tuple[int, int], frames: int, repeats: int) -> dict:
    """Seconds per ``voxelize_dat`` of a ``frames``-frame stream (file in the page cache)."""
    path = folder / f"bench_{spike_size[0]}x{spike_size[1]}.dat"
    write_dat(path, np.random.default_rng(0).random((frames, *spike_size)) < 0.2)
    voxelize_dat(path, spike_size, K)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        voxelize_dat(path, spike_size, K)
        times.append(time.perf_counter() - start)
    size_mb = path.stat().st_size / 1e6
    return {"spike_size": list(spike_size), "frames": frames, "mb": size_mb, "seconds": times,
            "mb_per_s": size_mb / float(np.median(times))}


def run(work: Path, batches: int, workers: Sequence[int], reprs: Sequence[str] = tuple(REPRS)) -> dict:
    results: dict = {"host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "python": platform.python_version(),
                              "torch": torch.__version__, "load_average_start": os.getloadavg()},
                     "loader": [], "voxelize": []}
    for name, (synth, layout, crop, timed) in SHAPES.items():
        representations = [r for r in timed if r in reprs]
        if not representations:
            continue
        root = work / name
        start = time.perf_counter()
        generate(root, synth, layout)
        prepare(root, k=K)
        print(f"[throughput] {name}: dataset generated and prepared in {time.perf_counter() - start:.1f}s")
        for representation in representations:
            for cache in (False, True):
                for w in workers:
                    times, read, dataset = time_loader(root, crop, w, cache, batches, representation=representation)
                    results["loader"].append({
                        "shape": name, "layout": layout, "rgb": list(synth.size),
                        "spike": list(synth.sensor_size()), "spike_frames": synth.subframes, "crop": crop,
                        "clip_len": CLIP_LEN, "repr": representation, "channels": loader_config(root, crop, w, cache, representation).DATA.spike_channels,
                        "source": "cache" if cache else "dat", "workers": w, "clips_per_s": len(times) / sum(times),
                        "read_bytes_per_clip": read,
                        "file_bytes_per_clip": file_bytes_per_clip(dataset, stored_stream(representation, cache)),
                        "seconds_per_batch": times})
    for size in ((360, 640), (250, 400)):
        results["voxelize"].append(time_voxelize(work, size, frames=256, repeats=5))
    results["host"]["load_average_end"] = os.getloadavg()  # other jobs on the machine skew every number
    return results


def table(results: dict) -> str:
    lines = [f"{'shape':<6}{'rgb':>10}{'spike':>9}{'crop':>6}{'T':>3}{'repr':>11}{'C':>4}{'source':>8}"
             f"{'workers':>9}{'clips/s':>10}{'MB read/clip':>14}{'MB in files/clip':>18}"]
    for r in results["loader"]:
        read = "-" if r.get("read_bytes_per_clip") is None else f"{r['read_bytes_per_clip'] / 1e6:.2f}"
        files = f"{r['file_bytes_per_clip'] / 1e6:.2f}" if "file_bytes_per_clip" in r else "-"
        lines.append(f"{r['shape']:<6}{'x'.join(map(str, r['rgb'])):>10}{'x'.join(map(str, r['spike'])):>9}"
                     f"{r['crop']:>6}{r['clip_len']:>3}{r['repr']:>11}{r['channels']:>4}{r['source']:>8}"
                     f"{r['workers']:>9}{r['clips_per_s']:>10.2f}{read:>14}{files:>18}")
    lines.append("")
    lines.append(f"{'.dat -> voxel (K=32)':<24}{'frames':>8}{'MB':>8}{'MB/s':>9}")
    for r in results["voxelize"]:
        lines.append(f"{'x'.join(map(str, r['spike_size'])):<24}{r['frames']:>8}{r['mb']:>8.2f}{r['mb_per_s']:>9.1f}")
    return "\n".join(lines)
