"""The recipe's keys (TRAIN.EMA_DECAY, FIX_ITER, FIX_KEYS, FIX_LR_MUL, FREEZE, LOG.VAL_USE_EMA) and how FREEZE and
FIX_KEYS shape the optimizer (ds_deblur.zero.staged), on the tiny model. The runs under ZeRO are tests/zero/test_recipe.py and
tests/train/test_finetune.py."""
from __future__ import annotations

import pytest
import torch

from ds_deblur.config import ConfigError, load_config
from ds_deblur.models import build_model
from ds_deblur.zero.setup import build_optimizer
from ds_deblur.zero.staged import freeze, param_groups

MINIMAL = {"DATA": {"ROOT": "/data"}}
TINY = ["MODEL.PRESET=tiny", "DATA.K=4"]


def tiny(*sets: str):
    cfg = load_config(MINIMAL, [*TINY, *sets])
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def test_defaults_keep_the_recipe_off_and_validation_follows_the_ema():
    cfg = load_config(MINIMAL)
    train = cfg.TRAIN
    assert (train.EMA_DECAY, train.FIX_ITER, train.FIX_KEYS, train.FIX_LR_MUL, train.FREEZE) == (0.0, 0, [], 1.0, [])
    assert cfg.LOG.VAL_USE_EMA is False
    assert load_config(MINIMAL, ["TRAIN.EMA_DECAY=0.999"]).LOG.VAL_USE_EMA is True
    assert load_config(MINIMAL, ["TRAIN.EMA_DECAY=0.999", "LOG.VAL_USE_EMA=false"]).LOG.VAL_USE_EMA is False


@pytest.mark.parametrize("sets, needle", [
    (["TRAIN.EMA_DECAY=1"], "TRAIN.EMA_DECAY must be in [0, 1)"),
    (["LOG.VAL_USE_EMA=true"], "LOG.VAL_USE_EMA is true but TRAIN.EMA_DECAY is 0"),
    (["TRAIN.FIX_ITER=100"], "TRAIN.FIX_ITER = 100 fixes nothing: TRAIN.FIX_KEYS is empty"),
    (["TRAIN.FIX_ITER=-1"], "TRAIN.FIX_ITER must be >= 0"),
    (["TRAIN.FIX_KEYS=[spynet]", "TRAIN.FIX_LR_MUL=0"], "TRAIN.FIX_LR_MUL must be > 0"),
    (["TRAIN.FREEZE=['']"], "TRAIN.FREEZE must not hold an empty string"),
    (["TRAIN.FIX_KEYS=spynet"], "TRAIN.FIX_KEYS must be a list"),
])
def test_bad_recipe_values_name_the_key(sets, needle):
    with pytest.raises(ConfigError) as err:
        load_config(MINIMAL, sets)
    assert needle in str(err.value)


def test_without_fix_keys_one_group_of_every_trained_parameter():
    cfg, model = tiny()
    assert param_groups(model, cfg) == list(model.parameters())


def test_fix_keys_make_a_second_group_at_the_multiplied_lr_without_decay_while_fixed():
    cfg, model = tiny("TRAIN.FIX_KEYS=[spynet, deform]", "TRAIN.FIX_ITER=10", "TRAIN.FIX_LR_MUL=0.125",
                      "TRAIN.OPTIM.LR=4e-4")
    names = {id(p): n for n, p in model.named_parameters()}
    others, fixed = param_groups(model, cfg)
    assert all("spynet" in names[id(p)] or "deform" in names[id(p)] for p in fixed["params"])
    assert not any("spynet" in names[id(p)] or "deform" in names[id(p)] for p in others["params"])
    assert len(others["params"]) + len(fixed["params"]) == len(names)
    assert fixed["lr"] == pytest.approx(5e-5) and fixed["weight_decay"] == 0.0 and "lr" not in others
    optimizer = build_optimizer(model, cfg, {})
    assert [g["lr"] for g in optimizer.param_groups] == [4e-4, pytest.approx(5e-5)]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]


def test_freeze_keeps_parameters_out_of_the_optimizer():
    cfg, model = tiny("TRAIN.FREEZE=[vrt.spynet]", "TRAIN.FIX_KEYS=[spynet, deform]")
    frozen = freeze(model, cfg)
    assert frozen and all(n.startswith("vrt.spynet") for n in frozen)
    params = dict(model.named_parameters())
    assert not any(params[n].requires_grad for n in frozen)
    others, fixed = param_groups(model, cfg)  # spynet is frozen: only the deformable convs are fixed
    in_groups = {id(p) for p in others["params"] + fixed["params"]}
    assert not any(id(params[n]) in in_groups for n in frozen)


@pytest.mark.parametrize("sets, needle", [
    (["TRAIN.FREEZE=[nothing_here]"], "TRAIN.FREEZE ['nothing_here'] matches no parameter"),
    (["TRAIN.FREEZE=[.]"], "matches every parameter"),
    (["TRAIN.FIX_KEYS=[nothing_here]"], "TRAIN.FIX_KEYS ['nothing_here'] match no trained parameter"),
    (["TRAIN.FREEZE=[spynet]", "TRAIN.FIX_KEYS=[spynet]"], "(TRAIN.FREEZE ['spynet'] froze some)"),
])
def test_keys_that_match_nothing_or_everything_are_errors(sets, needle):
    cfg, model = tiny(*sets)
    with pytest.raises(ConfigError) as err:
        freeze(model, cfg)
        param_groups(model, cfg)
    assert needle in str(err.value)
