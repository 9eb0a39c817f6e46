"""VRT's training recipe under ZeRO 1, 2 and 3 on 1 and 2 gloo ranks (tests/support/recipe_toy.py runs it): the sharded EMA
against a plain PyTorch EMA of the same run's weights, validation with the EMA weights against a plain module
holding them, frozen (TRAIN.FREEZE) and fixed (TRAIN.FIX_ITER) parameters bit-identical while they must be, exact
resume across FIX_ITER, and EMA, groups and frozen weights carried through universal and single-file resumes."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from ds_deblur.ckpt.gather import gather, module_state_dict, open_tag, saved_group_settings
from support.recipe_toy import FIX_ITER, FIXED, FROZEN, RESHARDED, RUNS, SAVED, rank_main
from support.tag_factory import Toy
from support.train_utils import free_port

pytestmark = [pytest.mark.dist, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    for world in (2, 1):  # the 1-rank ranks also reshard the 2-rank tags
        mp.spawn(rank_main, args=(world, free_port(), str(root)), nprocs=world, join=True)
    return root


def straight(runs, name) -> dict:
    return torch.load(runs / f"{name}.straight.pt", weights_only=True)


@pytest.mark.parametrize("name", list(RUNS))
def test_sharded_ema_equals_a_plain_pytorch_ema_of_the_same_weights(runs, name):
    record = straight(runs, name)
    for number in SAVED:
        tag = open_tag(runs / name / "ckpts" / f"step_{number:06d}")
        gathered = gather(tag, with_moments=False, with_ema=True)
        want = record["ema_at"][number]
        assert gathered.ema.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(gathered.ema[key], value), (number, key)
    if name.endswith("fp16"):  # overflowing steps were skipped: the EMA must have skipped them too
        assert not all(s["applied"] for s in record["steps"])


@pytest.mark.parametrize("name", list(RUNS))
def test_validation_with_ema_weights_computes_what_a_plain_module_holding_them_does(runs, name):
    swap = straight(runs, name)["swap"]
    dtype = swap["out"].dtype if not name.endswith(("fp16", "bf16")) else \
        {"fp16": torch.float16, "bf16": torch.bfloat16}[name.rsplit("_", 1)[1]]
    plain = Toy()
    plain.load_state_dict({**plain.state_dict(), **swap["ema"]})
    plain.to(dtype)
    for key, value in plain.named_parameters():  # the module held exactly the EMA weights in its precision
        assert torch.equal(swap["inside"][key], value), key
    with torch.no_grad():
        assert torch.equal(swap["out"], plain(swap["x"].to(dtype)).float())
    assert swap["restored"]  # masters, EMA partitions and module weights: the same bits after


@pytest.mark.parametrize("name", list(RUNS))
def test_frozen_and_fixed_parameters_stay_bit_identical_then_fixed_ones_train(runs, name):
    record = straight(runs, name)
    initial, steps = record["initial"], record["steps"]
    assert all(torch.equal(s["weights"][FROZEN], initial[FROZEN]) for s in steps)
    for number, s in enumerate(steps, 1):
        if number <= FIX_ITER:
            assert torch.equal(s["weights"][FIXED], initial[FIXED]), number
            assert s["fixed_moments_zero"], number  # Adam's moments stayed exactly 0
    assert not torch.equal(steps[-1]["weights"][FIXED], initial[FIXED])
    assert not torch.equal(steps[-1]["weights"]["conv1.weight"], initial["conv1.weight"])
    tag = open_tag(runs / name / "ckpts" / "step_000003")
    applied = [s["applied"] for s in steps[:3]]
    settings = saved_group_settings(tag)
    # The fixed group's Adam state restarted at FIX_ITER (KAIR's fresh state): it counts only the steps after it.
    assert [step for _, step in settings] == [sum(applied), sum(applied[FIX_ITER:])]
    assert settings[1][0]["weight_decay"] == settings[0][0]["weight_decay"] == 0.1  # back after FIX_ITER
    assert settings[1][0]["lr"] == pytest.approx(0.5 * settings[0][0]["lr"])
    gathered = gather(tag, with_moments=True)
    assert gathered.frozen == [FROZEN] and FROZEN not in gathered.steps


@pytest.mark.parametrize("name", list(RUNS))
def test_resume_across_fix_iter_is_exact_including_the_ema(runs, name):
    world = RUNS[name][0]
    for rank in range(world):
        a = torch.load(runs / f"{name}.straight.rank{rank}.pt", weights_only=True)
        b = torch.load(runs / f"{name}.resumed.rank{rank}.pt", weights_only=True)
        for key in ("masters", "shadow"):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), (rank, key)
        for x, y in zip(a["adam"], b["adam"]):
            assert x.keys() == y.keys() and all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
        assert a["groups"] == b["groups"] and a["fixed_hooks"] is b["fixed_hooks"] is False


@pytest.mark.parametrize("how", ["universal", "single"])
@pytest.mark.parametrize("name", RESHARDED)
def test_ema_groups_and_frozen_weights_survive_another_world_size(runs, name, how):
    a = open_tag(runs / name / "ckpts" / "step_000003")
    b = open_tag(runs / f"{name}_{how}" / "ckpts" / "step_000003")
    assert (a.world_size, b.world_size) == (2, 1)
    ga, gb = gather(a, with_moments=True, with_ema=True), gather(b, with_moments=True, with_ema=True)
    for field in ("weights", "ema"):
        x, y = getattr(ga, field), getattr(gb, field)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), field
    assert module_state_dict(b, gb.weights)[FROZEN].item() == 1.5  # not the 9.0 the fresh module had
    for key in ga.moments:
        assert all(torch.equal(ga.moments[key][k], gb.moments[key][k]) for k in ga.moments[key]), key
    assert ga.steps == gb.steps and gb.steps[FIXED] < gb.steps["conv1.weight"]
    assert [s for s in saved_group_settings(a)] == [s for s in saved_group_settings(b)]


def test_ema_without_zero_partitions_is_an_error_naming_the_key(runs):
    message = (runs / "zero0_error.txt").read_text()
    assert "TRAIN.EMA_DECAY needs ZeRO stage 1, 2 or 3" in message and "stage 0" in message
