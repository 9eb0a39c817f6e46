"""Small datasets made on the fly for the data tests."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from ds_deblur.config import Config, load_config
from ds_deblur.data import write_dat
from ds_deblur.data.synth import SynthConfig, generate

# Spike sensor half the RGB size so every test also runs the bilinear upsampling path.
TINY = SynthConfig.first_generator(seed=3, train_seqs=2, val_seqs=1, frames=6, size=(32, 40), spike_size=(16, 20),
                                    subframes=8, objects=(1, 2))
TINY_K = 4


@pytest.fixture(scope="session")
def tiny() -> SimpleNamespace:
    """The tiny dataset's generator settings (``synth``) and the voxel bins the tests use with it (``k``)."""
    return SimpleNamespace(synth=TINY, k=TINY_K)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset; read-only (copy it with ``tiny_copy`` to break it)."""
    return generate(tmp_path_factory.mktemp("synth") / "tiny", TINY)


@pytest.fixture
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_root, tmp_path / "copy"))


@pytest.fixture(scope="session")
def gopro_root(tmp_path_factory) -> Path:
    """The tiny dataset in the GoPro spike release's layout (same pixels and spikes as ``tiny_root``); read-only."""
    return generate(tmp_path_factory.mktemp("synth") / "gopro", TINY, layout="gopro")


@pytest.fixture
def gopro_copy(gopro_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(gopro_root, tmp_path / "gopro"))


@pytest.fixture
def make_cfg() -> Callable[..., Config]:
    def build(root: Path, data: dict | None = None, **sections) -> Config:
        raw = {"SEED": 7, "DATA": {"ROOT": str(root), "K": TINY_K, "CLIP_LEN": 3, "CROP_SIZE": 16, **(data or {})},
               "DATALOADER": {"NUM_WORKERS": 0}, "TRAIN": {"BATCH_SIZE": 2}}
        for name, values in sections.items():
            raw.setdefault(name, {}).update(values)
        return load_config(raw)
    return build


@pytest.fixture
def coded_dataset() -> Callable[..., Path]:
    return write_coded_dataset


def write_coded_dataset(root: Path, size=(24, 32), frames=4, spike_frames=8, seqs=("a",), split="train") -> Path:
    """Frames whose pixels say where they are: R = row, G = column, B = 10 * frame (+1 for sharp), and random
    spike streams (seeded per frame). Lets a test decode, from any crop, which pixels it came from."""
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    (root / "meta.yaml").write_text(yaml.safe_dump({"spike_size": list(size)}))
    for seq in seqs:
        seq_dir = root / split / seq
        for sub in ("blur", "sharp", "spike"):
            (seq_dir / sub).mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            for sub, offset in (("blur", 0), ("sharp", 1)):
                rgb = np.stack([rows, cols, np.full_like(rows, 10 * f + offset)], axis=-1).astype(np.uint8)
                Image.fromarray(rgb).save(seq_dir / sub / f"{f:06d}.png")
            spikes = np.random.default_rng([f, len(seq)]).random((spike_frames, height, width)) < 0.3
            write_dat(seq_dir / "spike" / f"{f:06d}.dat", spikes)
    return root
