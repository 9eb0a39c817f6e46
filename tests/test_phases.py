"""S-VRT's phases inside one run (ds_deblur.phases, losses.FusionLoss, zero.staged's waiting groups): the phase-1
forward gives the fused frames without the backbone, the losses against their definitions (S-VRT's
_compute_fusion_aux_loss and its pass-through schedule written out), the parameter groups each phase trains, and
errors naming the keys. The multi-process runs (exact resume across the switch) are in tests/ckpt/test_resume.py."""
from __future__ import annotations

import pytest
import torch

from ds_deblur.config import ConfigError
from ds_deblur.losses import DeblurLoss, FusionLoss
from ds_deblur.models import build_model
from ds_deblur.phases import Phases
from ds_deblur.zero.staged import delayed, freeze, param_groups
from support.train_utils import config_for
from tests.ckpt.test_resume import SVRT
from tests.models.svrt.test_net import fusion, inputs, randomise, tiny

DELTA = 1e-3
PHASES = ["TRAIN.FUSION_FIRST=true", "TRAIN.FIX_ITER=4", "LOSS.FUSION.PHASE1_WEIGHT=1.0",
          "LOSS.FUSION.PASSTHROUGH_START=0.2", "LOSS.FUSION.UPDATE_PENALTY=0.01", "LOSS.FUSION.PHASE2_WEIGHT=0.2"]


def charbonnier(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((x - y) ** 2 + DELTA ** 2).mean()


def svrt_passthrough(current_step: int, fix_iter: int, start: float, end: float) -> float:
    """S-VRT's _resolve_phase1_passthrough_weight, over its 1-based iteration counter."""
    if fix_iter <= 1:
        return end
    clamped = min(max(current_step, 0), fix_iter - 1)
    return start + (end - start) * (clamped / float(fix_iter - 1))


def test_passthrough_weight_follows_svrt_schedule():
    # S-VRT's fix_iter 6 is 5 phase-1 steps (its iterations 1-5): TRAIN.FIX_ITER 5.
    loss = FusionLoss(DELTA, phase1_steps=5, passthrough_start=0.2, passthrough_end=0.05)
    for step in range(1, 8):
        assert loss.passthrough_weight(step) == pytest.approx(svrt_passthrough(step, 6, 0.2, 0.05), abs=1e-12)
    one = FusionLoss(DELTA, 1, passthrough_start=0.2, passthrough_end=0.05)
    assert one.passthrough_weight(1) == pytest.approx(svrt_passthrough(1, 2, 0.2, 0.05), abs=1e-12)


def test_phase_losses_are_their_definitions():
    g = torch.Generator().manual_seed(0)
    fused, sharp, blurry = (torch.rand(2, 3, 3, 8, 8, generator=g) for _ in range(3))
    loss = FusionLoss(DELTA, 4, phase1_weight=1.0, passthrough_start=0.2, passthrough_end=0.0, update_penalty=0.01,
                      phase2_weight=0.3)
    total, parts = loss.phase1(fused, sharp, blurry, step=1)
    want = charbonnier(fused, sharp) + 0.15 * charbonnier(fused, blurry) + 0.01 * (fused - blurry).abs().mean()
    torch.testing.assert_close(total, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(parts["loss_passthrough"], charbonnier(fused, blurry), rtol=1e-6, atol=0)
    total, parts = loss.phase1(fused, sharp, blurry, step=4)  # the pass-through weight has reached 0: not computed
    assert set(parts) == {"loss_fusion", "loss_update"}
    total, parts = loss.phase2(fused, sharp)
    torch.testing.assert_close(total, 0.3 * charbonnier(fused, sharp), rtol=1e-6, atol=0)


@pytest.mark.parametrize("contract, centre", [("collapsed", None), ("expanded", 2)])
@torch.no_grad()
def test_fusion_only_forward_gives_one_fused_frame_per_input_frame(contract, centre):
    model = tiny(fusion(7, "pase_residual" if contract == "collapsed" else "gated", contract=contract))
    randomise(model.fusion_operator)
    blur, spike = inputs(s=4)
    frames, per_exposure = model.fusion_adapter(blur, spike)
    want = frames if centre is None else frames[:, centre::per_exposure]  # S-VRT's centre sub-frame of each frame
    model.fusion_only = True
    torch.testing.assert_close(model(blur, spike), want, rtol=0, atol=0)
    model.fusion_only, model.keep_fused = False, True
    out = model(blur, spike)
    assert out.shape == blur.shape
    torch.testing.assert_close(model.last_fused, want, rtol=0, atol=0)


def phases_for(tmp_path, sets=()) -> tuple[Phases, torch.nn.Module]:
    cfg = config_for(tmp_path / "data", tmp_path / "run", [*SVRT, *PHASES, *sets])
    model = tiny(cfg.MODEL.NETG)
    return Phases(cfg, model, loader=None, main_loss=DeblurLoss(DELTA)), model


def test_training_forward_and_loss_of_each_phase(tmp_path):
    phases, model = phases_for(tmp_path)
    randomise(model.fusion_operator)
    blur, spike = inputs(s=4)
    sharp = torch.rand_like(blur)
    fused = model.fusion_operator(blur, spike).detach()
    assert [phases.phase(step) for step in (0, 3, 4)] == [1, 1, 2]
    with phases.training_forward(step=0):
        out = model(blur, spike)
        total, parts = phases.loss(out, sharp, blur, step=0)  # optimizer step 1
    torch.testing.assert_close(out, fused, rtol=0, atol=0)  # phase 1: the fused frames, no backbone
    want = charbonnier(fused, sharp) + 0.15 * charbonnier(fused, blur) + 0.01 * (fused - blur).abs().mean()
    torch.testing.assert_close(total, want, rtol=1e-6, atol=0)
    assert parts["weight_passthrough"] == pytest.approx(0.15)
    assert not model.fusion_only and model.last_fused is None  # validation runs the whole network
    with phases.training_forward(step=4):
        out = model(blur, spike)
        total, parts = phases.loss(out, sharp, blur, step=4)
    torch.testing.assert_close(total, charbonnier(out, sharp) + 0.2 * charbonnier(fused, sharp), rtol=1e-6, atol=0)
    assert set(parts) == {"loss_charbonnier", "loss_fusion"}


def test_each_phase_trains_its_own_groups(tmp_path):
    cfg = config_for(tmp_path / "data", tmp_path / "run", [*SVRT, *PHASES, "TRAIN.HEAD_ONLY_STEPS=2",
                                                           "TRAIN.FIX_KEYS=[spynet]", "TRAIN.FIX_LR_MUL=0.25"])
    model = tiny(cfg.MODEL.NETG)
    names = [name for name, _ in model.named_parameters()]
    fixed, backbone, features = delayed(model, cfg)
    assert (fixed.why, fixed.start, fixed.lr_mul) == ("TRAIN.FIX_KEYS", 4, 0.25)
    assert fixed.names == [n for n in names if "spynet" in n]
    assert backbone.start == 4 and not any(n.startswith(("fusion_", "spynet")) for n in backbone.names)
    assert features.start == 2 and features.names == [n for n in names if n.startswith(
        ("fusion_operator.rgb_context_encoder.", "fusion_operator.pase.", "fusion_operator.fusion_body."))]
    groups = param_groups(model, cfg)
    first = {id(p) for p in groups[0]["params"]}
    head = {n for n, p in model.named_parameters() if id(p) in first}
    assert head == {n for n in names if n.startswith(("fusion_operator.fusion_writeback_head.",
                                                      "fusion_operator.alpha", "fusion_adapter.spike_upsample."))}
    assert [g.get("weight_decay") for g in groups[1:]] == [0.0, 0.0, 0.0]  # no decay while waiting


def test_freeze_backbone_keeps_fix_keys_for_phase_two(tmp_path):
    sets = [*SVRT, *PHASES, "TRAIN.FREEZE_BACKBONE=true", "TRAIN.FIX_KEYS=[spynet]", "MODEL.LORA_RANK=2"]
    cfg = config_for(tmp_path / "data", tmp_path / "run", sets)
    model = build_model(cfg)
    frozen = set(freeze(model, cfg))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("fusion_", "spynet")) or ".lora_" in n for n in trained)
    assert any("spynet" in n for n in trained) and not any("spynet" in n for n in frozen)
    later = {d.why: d.names for d in delayed(model, cfg)}
    assert all(".lora_" in n for n in later["phase 2 (TRAIN.FUSION_FIRST)"])  # the adapters wait for phase 2


@pytest.mark.parametrize("sets, needle", [
    (["TRAIN.FIX_ITER=0"], "TRAIN.FUSION_FIRST needs TRAIN.FIX_ITER > 0"),
    (["LOSS.FUSION.PHASE1_WEIGHT=0", "LOSS.FUSION.PASSTHROUGH_START=0", "LOSS.FUSION.UPDATE_PENALTY=0"],
     "phase 1 would have no loss"),
    (["TRAIN.FUSION_FIRST=false", "TRAIN.FIX_KEYS=[spynet]", "TRAIN.HEAD_ONLY_STEPS=3"],
     "TRAIN.HEAD_ONLY_STEPS = 3 has no effect without"),
    (["DATA.PHASE1_CROP_SIZE=30"], "DATA.PHASE1_CROP_SIZE must be a positive multiple of 8"),
])
def test_phase_settings_that_cannot_work_name_the_key(tmp_path, sets, needle):
    with pytest.raises(ConfigError, match=needle):
        config_for(tmp_path / "data", tmp_path / "run", [*SVRT, *PHASES, *sets])


def test_phases_need_fused_frames(tmp_path):
    with pytest.raises(ConfigError, match="TRAIN.FUSION_FIRST needs S-VRT's network"):
        config_for(tmp_path / "data", tmp_path / "run", [*PHASES])
    cfg = config_for(tmp_path / "data", tmp_path / "run", [*SVRT, *PHASES])
    middle = tiny(dict(input=dict(strategy="fusion", mode="dual", raw_ingress_chans=7),
                       fusion=dict(placement="middle", operator="gated", inject_stages=[1],
                                   middle=dict(out_chans=16))))
    with pytest.raises(ConfigError, match="placement early or hybrid; this model has middle"):
        Phases(cfg, middle, loader=None, main_loss=DeblurLoss(DELTA))
