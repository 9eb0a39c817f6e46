"""A LoRA run of S-VRT's network under ZeRO 2 on 2 ranks: from an S-VRT weights file without adapters, only the
fusion module and the adapters train (freeze_backbone); last.pth carries the adapters and ``convert --merge-lora``
folds them into the plain layer names, which a run without adapters loads."""
from __future__ import annotations

import pytest
import torch

from ds_deblur.ckpt.cli import convert_main
from ds_deblur.ckpt.single_file import load_single_file
from ds_deblur.ckpt.weights import load_weights
from support.train_utils import model_from_sets, output_of, run_train
from tests.ckpt.test_resume import SVRT

LORA = ["MODEL.LORA_RANK=2", "MODEL.LORA_ALPHA=4", "TRAIN.FREEZE_BACKBONE=true"]
SVRT_MODEL = [s for s in SVRT if s.startswith("MODEL.")] + ["DATA.SPIKE_REPR=tfp", "DATA.K=4", "DATA.CLIP_LEN=2"]


@pytest.mark.dist
@pytest.mark.slow
def test_lora_run_trains_adapters_and_fusion_only_and_exports_merged_weights(data, tmp_path):
    start = model_from_sets(SVRT_MODEL, seed=4).state_dict()  # S-VRT's {iter}_G.pth of a run without adapters
    torch.save(start, tmp_path / "5000_G.pth")
    out = tmp_path / "run"
    proc = run_train(data, out, sets=[*SVRT, *LORA, "TRAIN.TOTAL_STEPS=2", "LOG.SAVE_EVERY_STEPS=2"],
                     extra=["--init-weights", str(tmp_path / "5000_G.pth")])
    assert proc.returncode == 0, output_of(proc)
    trained = load_single_file(out / "ckpts/last.pth")["state_dict"]
    changed = {k for k, v in trained.items() if ".lora_" not in k and not torch.equal(v, start[k.replace(
        ".base.", ".")])}
    assert changed and all(k.startswith(("fusion_operator.", "fusion_adapter.")) for k in changed), changed
    assert any(v.any() for k, v in trained.items() if ".lora_B." in k)  # the adapters moved off zero
    merged_path = tmp_path / "merged.pth"
    assert convert_main([str(out / "ckpts"), "--weights-only", "--merge-lora", "--out", str(merged_path)]) == 0
    merged = torch.load(merged_path, weights_only=True)
    assert merged.keys() == start.keys()
    layer = "stage1.residual_group2.blocks.0.attn.qkv_self"
    delta = trained[f"{layer}.lora_B.weight"] @ trained[f"{layer}.lora_A.weight"]
    torch.testing.assert_close(merged[f"{layer}.weight"], trained[f"{layer}.base.weight"] + delta * 2.0, rtol=0,
                               atol=0)
    plain = model_from_sets(SVRT_MODEL, seed=5)
    load_weights(plain, merged_path)  # strict, without adapters
    with pytest.raises(SystemExit) as refused:  # the full single file keeps the adapters
        convert_main([str(out / "ckpts"), "--merge-lora", "--out", str(tmp_path / "x.pth")])
    assert refused.value.code == 2
