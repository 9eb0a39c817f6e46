"""Spike-camera deblurring data: .dat I/O, voxels, clips, resumable sampling, synthetic data, checks."""
from ds_deblur.errors import DatasetError

from .dataset import ClipOptions, SpikeDeblurDataset
from .layout import SequenceInfo, resolve_spike_size, scan_split
from .loader import ResumableDataLoader, build_dataloaders, build_datasets, load_voxel_stats, seed_worker
from .sampler import ResumableDistributedSampler, SampleKey
from .spike_io import read_dat, write_dat
from .voxel import VoxelStats, resample_window, voxelize_dat

__all__ = [
    "ClipOptions", "DatasetError", "ResumableDataLoader", "ResumableDistributedSampler", "SampleKey",
    "SequenceInfo", "SpikeDeblurDataset", "VoxelStats", "build_dataloaders", "build_datasets",
    "load_voxel_stats", "read_dat", "resample_window", "resolve_spike_size", "scan_split",
    "seed_worker", "voxelize_dat", "write_dat",
]
