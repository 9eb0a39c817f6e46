"""DATALOADER.TOTAL_WORKERS and the per-loader prefetch factors of the original trainer reach the DataLoaders."""
from ds_deblur.data import build_dataloaders


def test_total_workers_split_over_ranks_and_prefetch_per_loader(tiny_root, make_cfg):
    cfg = make_cfg(tiny_root, {"SPIKE_MEAN": 0.2, "SPIKE_STD": 0.5},
                   DATALOADER={"NUM_WORKERS": None, "TOTAL_WORKERS": 4, "TRAIN_PREFETCH_FACTOR": 3,
                               "VAL_PREFETCH_FACTOR": 1, "PERSISTENT_WORKERS": False})
    train, val = build_dataloaders(cfg, rank=1, world_size=2)
    assert (train.num_workers, val.num_workers) == (2, 2)
    assert (train.prefetch_factor, val.prefetch_factor) == (3, 1)
    assert len(next(iter(train))["blur"]) == 2  # the workers really load
    single, _ = build_dataloaders(cfg, rank=0, world_size=8)
    assert single.num_workers == 1  # at least one each, as the original


def test_num_workers_argument_still_wins(tiny_root, make_cfg):
    cfg = make_cfg(tiny_root, {"SPIKE_MEAN": 0.2, "SPIKE_STD": 0.5},
                   DATALOADER={"NUM_WORKERS": None, "TOTAL_WORKERS": "auto"})
    train, val = build_dataloaders(cfg, num_workers=0)
    assert (train.num_workers, val.num_workers, train.prefetch_factor) == (0, 0, None)
