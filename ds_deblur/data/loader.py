"""DataLoaders for training (resumable, sharded) and validation (sharded, every clip once), and the spike
normalisation they need."""
from __future__ import annotations

import os
import random
import warnings
from dataclasses import replace
from functools import partial
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from ds_deblur.config.schema import DEFAULT_WORKERS, TOTAL_WORKERS_FORMAT
from ds_deblur.errors import DatasetError

from .dataset import ClipOptions, SpikeDeblurDataset
from .layout import Root
from .representations import SpikeRepr
from .roots import DataLayout, LayoutOptions, open_layout
from .sampler import ResumableDistributedSampler
from .voxel import STATS_FILE, VoxelStats, compute_stats, voxelize_dat

FALLBACK_STATS_FRAMES = 8


def seed_worker(worker_id: int, base_seed: int, rank: int = 0) -> None:
    """``worker_init_fn``: seed python, numpy and torch in each worker from (base seed, rank, worker).
    Augmentation does not rely on these (it is seeded per sample); they cover any other randomness."""
    seed = int(np.random.SeedSequence([base_seed, rank, worker_id]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ``ResumableDistributedSampler`` that advances the sampler's global position for
    each batch it hands out, so ``state_dict()`` taken between batches resumes right after the last one."""

    sampler: ResumableDistributedSampler

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            self.sampler.advance(len(batch["meta"]["seq"]))
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def load_voxel_stats(root: Root, k: int, spike_size: Sequence[int], mean: Optional[float] = None,
                     std: Optional[float] = None, train_split: str = "train") -> tuple[float, float]:
    """(mean, std) for voxel normalisation: the given values (DATA.NORM.MEAN/STD), else the dataset's
    voxel_stats.json (at the spike tree's root), else estimated from a few training frames with a warning (run
    ``prepare`` to compute them properly)."""
    if (mean is None) != (std is None):
        raise DatasetError("set both DATA.NORM.MEAN and DATA.NORM.STD, or neither (to use voxel_stats.json)")
    if mean is not None:
        return float(mean), float(std)
    layout = open_layout(root)
    stats = VoxelStats.load(layout.stats_dir, k)
    if stats is None:
        stats = _estimate_stats(layout, train_split, k, spike_size)
        warnings.warn(f"{layout.stats_dir / STATS_FILE} not found: voxel mean/std estimated from {stats.frames} "
                      f"training frames ({stats.mean:.4f}, {stats.std:.4f}); run "
                      f"`ds-deblur prepare {layout.root}` to compute them over the whole train split",
                      stacklevel=2)
    return stats.mean, stats.std


def _estimate_stats(layout: DataLayout, split: str, k: int, spike_size: Sequence[int]) -> VoxelStats:
    spikes, names = layout.spikes_dir(split), layout.options
    files = sorted(spikes.glob(f"*/{names.spike_dir}/*.dat"))
    load = partial(voxelize_dat, spike_size=spike_size, k=k)
    if not files:
        files = sorted(spikes.glob(f"*/{names.voxel_dir}/*.npy"))
        load = np.load
    if not files:
        raise DatasetError(f"no spike files under {spikes}/*/{names.spike_dir} to compute voxel statistics from")
    picks = np.linspace(0, len(files) - 1, min(FALLBACK_STATS_FRAMES, len(files))).round().astype(int)
    return compute_stats((load(files[i]) for i in picks), k, split)


def spike_normalisation(data: Any, layout: DataLayout, spike_size: Sequence[int]) -> tuple[float, float]:
    """(mean, std) the spike input is normalised with: the voxel's statistics (``load_voxel_stats``); for S-VRT's
    representations DATA.NORM.MEAN/STD when given (S-VRT's spike_normalize), else none (0, 1), as S-VRT, whose
    spike_normalize is null or the identity, feeds TFP images / 255 and raw 0/1 frames as they are."""
    if data.SPIKE_REPR == "voxel":
        return load_voxel_stats(layout, data.K, spike_size, data.NORM.MEAN, data.NORM.STD, data.TRAIN_SPLIT)
    if (data.NORM.MEAN is None) != (data.NORM.STD is None):
        raise DatasetError("set both DATA.NORM.MEAN and DATA.NORM.STD, or neither (no spike normalisation)")
    return (0.0, 1.0) if data.NORM.MEAN is None else (float(data.NORM.MEAN), float(data.NORM.STD))


def build_datasets(cfg: Any) -> tuple[SpikeDeblurDataset, SpikeDeblurDataset]:
    """Train and validation datasets from the config's DATA section (and SEED), in any layout (``roots``)."""
    data = cfg.DATA
    layout = open_layout(data.ROOT, LayoutOptions.from_config(data))
    spike_size = layout.spike_size(data.SPIKE_SIZE)
    mean, std = spike_normalisation(data, layout, spike_size)
    common = dict(clip_len=data.CLIP_LEN, k=data.K, mean=mean, std=std,
                  use_voxel_cache=data.USE_PRECOMPUTED_VOXELS, seed=cfg.SEED,
                  spike_repr=None if data.SPIKE_REPR == "voxel" else SpikeRepr.from_config(data),
                  flow_spike=SpikeRepr.flow_from_config(data) if data.FLOW_SPIKE == "encoding25" else None)
    train = ClipOptions(crop_size=data.crop_hw, hflip=data.HFLIP, vflip=data.VFLIP, rotate=data.ROTATE,
                        random_reverse=data.RANDOM_REVERSE, **common)
    val = ClipOptions(max_frames=data.VAL_MAX_FRAMES, **common)
    return (SpikeDeblurDataset(layout, data.TRAIN_SPLIT, train, training=True, spike_size=spike_size),
            SpikeDeblurDataset(layout, data.VAL_SPLIT, val, training=False, spike_size=spike_size))


def total_workers(value: Union[int, str], cpu_count: int) -> int:
    """DATALOADER.TOTAL_WORKERS (validated by the config) as a number: an integer, 'auto' (80% of the cores) or
    'cpu*F' (F x the cores)."""
    if isinstance(value, int):
        return value
    match = TOTAL_WORKERS_FORMAT.fullmatch(value.strip().lower())
    if match["count"] is not None:
        return int(match["count"])
    factor = 0.8 if match["factor"] is None else float(match["factor"])
    return max(1, int(cpu_count * factor))


def workers_per_rank(loader_cfg: Any, world_size: int, cpu_count: Optional[int] = None) -> int:
    """Loader workers of each rank: DATALOADER.NUM_WORKERS, or TOTAL_WORKERS split over the ranks (at least one
    each, as the original trainer did; an explicit total of 0 loads in the main process)."""
    if loader_cfg.NUM_WORKERS is not None:
        return loader_cfg.NUM_WORKERS
    if loader_cfg.TOTAL_WORKERS is None:
        return DEFAULT_WORKERS
    total = total_workers(loader_cfg.TOTAL_WORKERS, cpu_count or os.cpu_count() or 1)
    return 0 if total == 0 else max(1, total // max(world_size, 1))


def prefetch_factor(loader_cfg: Any, training: bool) -> int:
    """Batches each worker prepares ahead in the training (or validation) loader."""
    own = loader_cfg.TRAIN_PREFETCH_FACTOR if training else loader_cfg.VAL_PREFETCH_FACTOR
    return loader_cfg.PREFETCH_FACTOR if own is None else own


def build_dataloaders(cfg: Any, rank: int = 0, world_size: int = 1,
                      num_workers: Optional[int] = None) -> tuple[ResumableDataLoader, DataLoader]:
    """(train loader, val loader) for this rank. Train: shuffled by (SEED, epoch), ``TRAIN.BATCH_SIZE`` per
    rank, resumable (``set_epoch``/``state_dict``/``load_state_dict``). Val: batch 1 (whole frames may differ
    in size between sequences), rank r takes clips r, r+W, ...; padding samples (``meta['pad']``) only even
    out the ranks' step counts and must not be counted in metrics. Workers per rank: DATALOADER.NUM_WORKERS or
    DATALOADER.TOTAL_WORKERS split over the ranks; ``num_workers`` overrides the config."""
    train_set, val_set = build_datasets(cfg)
    if rank == 0:
        for dataset in (train_set, val_set):
            print(f"[data] {dataset.describe_sources()}", flush=True)
    loader_cfg = cfg.DATALOADER
    workers = workers_per_rank(loader_cfg, world_size) if num_workers is None else num_workers
    common: dict[str, Any] = dict(num_workers=workers, pin_memory=loader_cfg.PIN_MEMORY and torch.cuda.is_available())
    if workers > 0:
        common.update(persistent_workers=loader_cfg.PERSISTENT_WORKERS,
                      worker_init_fn=partial(seed_worker, base_seed=cfg.SEED, rank=rank))
    prefetch = {training: {"prefetch_factor": prefetch_factor(loader_cfg, training)} if workers > 0 else {}
                for training in (True, False)}
    train_sampler = ResumableDistributedSampler(len(train_set), world_size, rank, seed=cfg.SEED, shuffle=True)
    val_sampler = ResumableDistributedSampler(len(val_set), world_size, rank, seed=cfg.SEED, shuffle=False)
    # Own generators: starting an iterator draws a worker base seed, which must not consume the global torch RNG
    # (the model's, e.g. drop-path): a run resumed mid-epoch starts its iterator at another point of that stream.
    train = ResumableDataLoader(train_set, batch_size=cfg.TRAIN.BATCH_SIZE, sampler=train_sampler,
                                generator=torch.Generator().manual_seed(cfg.SEED), **common, **prefetch[True])
    val = DataLoader(val_set, batch_size=1, sampler=val_sampler, generator=torch.Generator().manual_seed(cfg.SEED),
                     **common, **prefetch[False])
    return train, val


def resized(loader: ResumableDataLoader, batch_size: int, crop_hw: tuple[int, int]) -> ResumableDataLoader:
    """``loader`` with another micro-batch and training crop over the same sampler, so both share one position
    (S-VRT's phase-wise gt_size and batch size)."""
    old = loader.dataset
    dataset = SpikeDeblurDataset(old.root, old.split, replace(old.options, crop_size=crop_hw), training=True,
                                 spike_size=old.spike_size)
    workers = loader.num_workers
    extra: dict[str, Any] = dict(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                                 worker_init_fn=loader.worker_init_fn) if workers else {}
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=loader.sampler, num_workers=workers,
                               pin_memory=loader.pin_memory, generator=torch.Generator().manual_seed(
                                   loader.generator.initial_seed()), **extra)
