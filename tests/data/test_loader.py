import random

import numpy as np
import pytest
import torch

from ds_deblur.data import DatasetError, VoxelStats, build_dataloaders, load_voxel_stats, seed_worker


def epoch_batches(loader, epoch=0):
    loader.set_epoch(epoch) if hasattr(loader, "set_epoch") else None
    return list(loader)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("blur", "sharp", "spike_vox"):
            assert torch.equal(x[name], y[name]), name
        assert x["meta"]["seq"] == y["meta"]["seq"] and torch.equal(x["meta"]["frames"], y["meta"]["frames"])


def test_builds_train_and_val_loaders(tiny_root, tiny, make_cfg):
    train, val = build_dataloaders(make_cfg(tiny_root, {"NORM": {"MEAN": 0.2, "STD": 0.5}}))
    batch = next(iter(train))
    assert batch["blur"].shape == (2, 3, 3, 16, 16) and batch["spike_vox"].shape == (2, 3, tiny.k, 16, 16)
    (first,) = [next(iter(val))]
    assert first["blur"].shape == (1, 3, 3, *tiny.synth.size)
    assert train.state_dict()["position"] == 2


def test_augmentation_does_not_depend_on_num_workers(tiny_root, make_cfg):
    cfg = make_cfg(tiny_root, {"NORM": {"MEAN": 0.2, "STD": 0.5}, "VFLIP": True},
                   DATALOADER={"PERSISTENT_WORKERS": False})
    serial = epoch_batches(build_dataloaders(cfg, num_workers=0)[0], epoch=1)
    parallel = epoch_batches(build_dataloaders(cfg, num_workers=2)[0], epoch=1)
    assert_same_batches(serial, parallel)


def test_loader_resumes_mid_epoch_with_identical_batches(tiny_root, make_cfg):
    cfg = make_cfg(tiny_root, {"NORM": {"MEAN": 0.2, "STD": 0.5}})
    reference = epoch_batches(build_dataloaders(cfg)[0], epoch=2)
    interrupted = build_dataloaders(cfg)[0]
    interrupted.set_epoch(2)
    it = iter(interrupted)
    head = [next(it), next(it)]
    state = interrupted.state_dict()
    assert state == {**state, "epoch": 2, "position": 4}
    resumed = build_dataloaders(cfg)[0]
    resumed.load_state_dict(state)
    assert_same_batches(head + epoch_batches(resumed, epoch=2), reference)
    # a two-rank continuation covers exactly the rest of the epoch
    rest = []
    for rank in range(2):
        loader = build_dataloaders(cfg, rank=rank, world_size=2)[0]
        loader.load_state_dict(state)
        rest += [(s, tuple(f)) for b in loader for s, f in zip(b["meta"]["seq"], b["meta"]["frames"].tolist())]
    done = [(s, tuple(f)) for b in head for s, f in zip(b["meta"]["seq"], b["meta"]["frames"].tolist())]
    assert sorted(done + rest) == sorted((s, tuple(f)) for b in reference for s, f in
                                         zip(b["meta"]["seq"], b["meta"]["frames"].tolist()))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_val_is_sharded_disjoint_and_complete(tiny_root, make_cfg, world):
    cfg = make_cfg(tiny_root, {"NORM": {"MEAN": 0.2, "STD": 0.5}, "CLIP_LEN": 4})
    seen, steps = [], set()
    for rank in range(world):
        val = build_dataloaders(cfg, rank=rank, world_size=world)[1]
        batches = list(val)
        steps.add(len(batches))
        seen += [(b["meta"]["seq"][0], b["meta"]["frames"][0, 0].item()) for b in batches if not b["meta"]["pad"][0]]
    # 6 frames, clips of 4 -> clips at 0 and 2; every rank runs the same number of steps
    assert sorted(seen) == [("seq_000", 0), ("seq_000", 2)] and len(steps) == 1


def test_voxel_stats_resolution(tiny_copy, tiny):
    size = tiny.synth.spike_size
    assert load_voxel_stats(str(tiny_copy), tiny.k, size, 0.3, 0.7) == (0.3, 0.7)
    with pytest.raises(DatasetError, match="both"):
        load_voxel_stats(str(tiny_copy), tiny.k, size, 0.3, None)
    with pytest.warns(UserWarning, match="prepare"):
        mean, std = load_voxel_stats(str(tiny_copy), tiny.k, size)
    assert 0 < mean and 0 < std
    VoxelStats(mean=1.5, std=0.25, k=tiny.k, frames=12, split="train").save(tiny_copy)
    assert load_voxel_stats(str(tiny_copy), tiny.k, size) == (1.5, 0.25)
    assert load_voxel_stats(str(tiny_copy), tiny.k, size, 0.3, 0.7) == (0.3, 0.7)  # config wins over the file


def test_seed_worker_is_deterministic_per_worker():
    def draw(worker, rank=0):
        seed_worker(worker, base_seed=11, rank=rank)
        return random.random(), np.random.rand(), torch.rand(1).item()
    assert draw(0) == draw(0)
    assert draw(0) != draw(1) and draw(0) != draw(0, rank=1)


REPR_CONFIGS = [({"SPIKE_REPR": "tfp", "TFP_HALF_WIN_LENGTH": 2}, 4),
                ({"SPIKE_REPR": "raw_window", "RAW_WINDOW_LENGTH": 5, "FLOW_SPIKE": "encoding25"}, 5)]


@pytest.mark.parametrize("data, channels", REPR_CONFIGS, ids=["tfp", "raw_window+encoding25"])
def test_representations_augmented_through_the_loader_and_the_model_width(tiny_root, make_cfg, capsys, data,
                                                                          channels):
    from ds_deblur.models import build_model
    cfg = make_cfg(tiny_root, {**data, "ROTATE": True, "RANDOM_REVERSE": True, "CROP_SIZE": [16, 16]},
                   MODEL={"PRESET": "tiny"})
    train, val = build_dataloaders(cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[data]")]
    assert len(lines) == 2 and "computed on the fly" in lines[0] and lines[1].startswith("[data] val ")
    assert train.dataset.options.mean == 0.0 and train.dataset.options.std == 1.0  # no voxel statistics
    batch = next(iter(train))
    assert batch["spike_vox"].shape == (2, 3, channels, 16, 16) == (2, 3, cfg.DATA.spike_channels, 16, 16)
    assert ("flow_spike" in batch) == ("FLOW_SPIKE" in data)
    if "FLOW_SPIKE" in data:
        assert batch["flow_spike"].shape == (2, 3, 25, 16, 16)
    assert build_model(cfg).spike_encoder.in_proj.in_channels == channels
    resumed = build_dataloaders(cfg)[0]
    resumed.load_state_dict({**train.state_dict(), "position": 0})
    assert_same_batches([batch], [next(iter(resumed))])


def test_rectangular_crop_batches(tiny_root, make_cfg):
    train, _ = build_dataloaders(make_cfg(tiny_root, {"NORM": {"MEAN": 0.2, "STD": 0.5}, "CROP_SIZE": [16, 24],
                                                      "VFLIP": True}))
    batch = next(iter(train))
    assert batch["blur"].shape == (2, 3, 3, 16, 24) and batch["spike_vox"].shape == (2, 3, 4, 16, 24)
