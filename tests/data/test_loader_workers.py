"""DATALOADER.TOTAL_WORKERS and the per-loader prefetch factors of the original trainer reach the DataLoaders."""
import pytest

from ds_deblur.config import load_config
from ds_deblur.data import build_dataloaders
from ds_deblur.data.loader import prefetch_factor, workers_per_rank

MINIMAL = {"DATA": {"ROOT": "/data"}}


@pytest.mark.parametrize("total, world, cpus, per_rank", [
    ("auto", 2, 10, 4), ("cpu*0.9", 4, 16, 3), ("cpu*0.1", 8, 16, 1), (6, 4, 1, 1), (12, 4, 1, 3), (0, 2, 8, 0),
    ("'12'", 4, 1, 3),  # a number as text
])
def test_total_workers_split_over_the_ranks(total, world, cpus, per_rank):
    loader = load_config(MINIMAL, [f"DATALOADER.TOTAL_WORKERS={total}"]).DATALOADER
    assert workers_per_rank(loader, world, cpu_count=cpus) == per_rank


def test_worker_keys_give_one_count_and_prefetch_follows_its_default():
    assert workers_per_rank(load_config(MINIMAL).DATALOADER, 4) == 2  # neither: 2 per rank
    assert workers_per_rank(load_config(MINIMAL, ["DATALOADER.NUM_WORKERS=5"]).DATALOADER, 4) == 5
    loader = load_config(MINIMAL, ["DATALOADER.PREFETCH_FACTOR=3", "DATALOADER.VAL_PREFETCH_FACTOR=1"]).DATALOADER
    assert (prefetch_factor(loader, True), prefetch_factor(loader, False)) == (3, 1)


def test_total_workers_split_over_ranks_and_prefetch_per_loader(tiny_root, make_cfg):
    cfg = make_cfg(tiny_root, {"NORM": {"MEAN": 0.2, "STD": 0.5}},
                   DATALOADER={"NUM_WORKERS": None, "TOTAL_WORKERS": 4, "TRAIN_PREFETCH_FACTOR": 3,
                               "VAL_PREFETCH_FACTOR": 1, "PERSISTENT_WORKERS": False})
    train, val = build_dataloaders(cfg, rank=1, world_size=2)
    assert (train.num_workers, val.num_workers) == (2, 2)
    assert (train.prefetch_factor, val.prefetch_factor) == (3, 1)
    assert len(next(iter(train))["blur"]) == 2  # the workers really load
    single, _ = build_dataloaders(cfg, rank=0, world_size=8)
    assert single.num_workers == 1  # at least one each, as the original


def test_num_workers_argument_still_wins(tiny_root, make_cfg):
    cfg = make_cfg(tiny_root, {"NORM": {"MEAN": 0.2, "STD": 0.5}},
                   DATALOADER={"NUM_WORKERS": None, "TOTAL_WORKERS": "auto"})
    train, val = build_dataloaders(cfg, num_workers=0)
    assert (train.num_workers, val.num_workers, train.prefetch_factor) == (0, 0, None)
