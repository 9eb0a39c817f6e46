"""S-VRT's two phases inside one run under the real launcher (tiny S-VRT network, TFP data): a run stopped in phase 1
and resumed across the switch equals an uninterrupted one bit for bit (ZeRO 2 on 2 ranks, ZeRO 3 on 1; phase 1 with
its own batch and crop), and the uninterrupted run's tags show what each phase trains: the write-back head alone
first, then the whole fusion module with the backbone bit-identical, then the backbone from a fresh Adam state."""
from __future__ import annotations

import pytest
import torch

from ds_deblur.ckpt.gather import gather, open_tag, saved_group_settings
from support.train_utils import ds_json, model_from_sets
from tests.ckpt.test_resume import SVRT, check_exact_resume

# Phase 1 = steps 1-4 (batch 2, crop 32), the fusion features waiting 2 of them; phase 2 = steps 5-6 (batch 1, 64).
PHASES = ("TRAIN.FUSION_FIRST=true", "TRAIN.FIX_ITER=4", "TRAIN.HEAD_ONLY_STEPS=2", "TRAIN.PHASE1_BATCH_SIZE=2",
          "DATA.PHASE1_CROP_SIZE=32", "LOSS.FUSION.PHASE1_WEIGHT=1.0", "LOSS.FUSION.PASSTHROUGH_START=0.2",
          "LOSS.FUSION.UPDATE_PENALTY=0.01", "LOSS.FUSION.PHASE2_WEIGHT=0.2",
          "TRAIN.OPTIM.WEIGHT_DECAY=0")  # as S-VRT's Adam: parameters without gradients (spike_upsample) keep theirs
HEAD = ("fusion_operator.fusion_writeback_head.", "fusion_operator.alpha")
FEATURES = ("fusion_operator.rgb_context_encoder.", "fusion_operator.pase.", "fusion_operator.fusion_body.")


LORA = ("MODEL.LORA_RANK=2", "MODEL.LORA_ALPHA=4", "TRAIN.FREEZE_BACKBONE=true")  # S-VRT's server recipe


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("stage, ranks, recipe", [(2, 2, LORA), (3, 1, ())], ids=["zero2-2ranks-lora", "zero3-1rank"])
def test_phases_resume_across_the_switch_exactly_and_train_what_each_phase_trains(data, tmp_path, stage, ranks,
                                                                                  recipe):
    model_sets = [s for s in (*SVRT, *recipe) if s.startswith("MODEL.")]
    start = model_from_sets([*model_sets, "DATA.SPIKE_REPR=tfp", "DATA.K=4", "DATA.CLIP_LEN=2"], seed=4).state_dict()
    torch.save(start, tmp_path / "start.pth")  # an S-VRT _G file (with the adapters when LoRA is on)
    log = check_exact_resume(data, tmp_path, ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage), ranks,
                             extra_sets=(*SVRT, *PHASES, *recipe, "LOG.KEEP_LAST=5",
                                         f"MODEL.INIT_WEIGHTS={tmp_path / 'start.pth'}"))
    assert [r["phase"] for r in log] == [1, 1, 1, 1, 2, 2]
    tags = {n: open_tag(tmp_path / f"straight/ckpts/step_{n:06d}") for n in (2, 4, 6)}
    gathered = {n: gather(tag, with_moments=True) for n, tag in tags.items()}

    def changed(n: int) -> set[str]:
        return {k for k, v in gathered[n].weights.items() if not torch.equal(v, start[k])}

    phase2 = {k for k in start if ".lora_" in k} if recipe else \
        {k for k in start if not k.startswith(("fusion_", "restoration_"))}  # the adapters, or the backbone
    assert changed(2) and all(k.startswith(HEAD) for k in changed(2))  # the write-back head alone
    assert any(k.startswith(FEATURES) for k in changed(4)) and not changed(4) & phase2  # phase 2's: bit-identical
    assert changed(6) & phase2  # phase 2 trains them
    assert all(k.startswith(("fusion_", *HEAD)) or k in phase2 for k in changed(6))  # and nothing else
    # Their Adam moments are exactly 0 through phase 1, then a fresh Adam (2 steps at step 6).
    moments = gathered[4].moments["exp_avg"]
    assert all(not moments[k].any() for k in phase2 if k in moments)
    steps = [step for _, step in saved_group_settings(tags[6])]
    assert steps == [6.0, 2.0, 4.0]  # from the start, phase 2's, the fusion features' (from step 3)
