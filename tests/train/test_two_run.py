"""S-VRT's two-run training from its option file (written here in S-VRT's format): one command trains phase 1 (the
fusion module alone) and then phase 2 from phase 1's final weights with a fresh optimizer, the manifest says where
each run is, and a training stopped in its second run and started again continues there and ends bit for bit where
an uninterrupted one does."""
from __future__ import annotations

import json

import pytest
import torch

from ds_deblur.ckpt.gather import open_tag, saved_group_settings
from ds_deblur.config import ConfigError, load_config, load_two_run
from ds_deblur.config.kair import read_option_file
from support.train_utils import REPO, output_of, run_train

ROOT = ["DATA.ROOT=/unused"]
# As S-VRT's server files write it: LoRA on a frozen backbone; phase 1 the fusion module alone (its write-back head
# first), phase 2 (fix_iter 1: released at its first iteration) the fusion, the adapters and fix_keys.
RECIPE = {"use_lora": True, "lora_rank": 2, "lora_alpha": 4, "freeze_backbone": True, "phase2_lora_mode": True,
          "fix_keys": ["spynet"], "fix_lr_mul": 0.5, "phase1_fusion_aux_loss_weight": 1.0,
          "fusion_passthrough_loss_weight": 0.2, "phase2_fusion_aux_loss_weight": 0.2}
PHASE1 = {"total_iter": 2, "fix_iter": 2, "G_optimizer_reuse": True, "G_scheduler_periods": 2, "checkpoint_save": 2,
          "checkpoint_test": 2, "fusion_warmup": {"head_only_iters": 2, "update_penalty_weight": 0.01}}
PHASE2 = {"total_iter": 3, "fix_iter": 1, "G_optimizer_reuse": False, "G_scheduler_periods": 3, "checkpoint_save": 1,
          "checkpoint_test": 3}


def options_file(tmp_path) -> str:
    """The CPU demo's option file made tiny, with S-VRT's two-run section and phase-1 loss."""
    opt = read_option_file(REPO / "ds_configs/svrt_early_fusion_cpu.json")
    for split in ("train", "test"):
        opt["datasets"][split]["tfp_half_win_length"] = 2
    opt["datasets"]["train"].update(dataloader_num_workers=0, dataloader_batch_size=2, gt_size=[32, 64])
    opt["netG"].update(depths=[1] * 8)
    opt["netG"]["fusion"]["operator_params"].update(feature_chans=8, hidden_chans=8)
    opt["train"].update(total_iter=5, G_scheduler_periods=5, **RECIPE,
                        two_run={"enable": True, "phase1": PHASE1, "phase2": PHASE2})
    path = tmp_path / "two_run_tiny.json"
    path.write_text("// written by the test\n" + json.dumps(opt, indent=1))
    return str(path)


def test_the_option_file_is_two_configs(tmp_path):
    first, second = load_two_run(options_file(tmp_path), ROOT)
    one, two = first.TRAIN, second.TRAIN
    assert (one.TOTAL_STEPS, one.FIX_ITER, one.FUSION_FIRST, one.HEAD_ONLY_STEPS) == (2, 2, True, 1)  # phase 1 only
    assert (first.DATA.PHASE1_CROP_SIZE, second.DATA.CROP_SIZE, second.DATA.PHASE1_CROP_SIZE) == (32, 64, None)
    assert (two.TOTAL_STEPS, two.FIX_ITER, two.FUSION_FIRST, two.FIX_KEYS) == (3, 0, False, ["spynet"])
    assert two.FREEZE_BACKBONE and second.MODEL.LORA_RANK == 2 and second.LOSS.FUSION.PHASE2_WEIGHT == 0.2
    with pytest.raises(ConfigError, match="two_run.enable is on: .* --set train.two_run.enable=false"):
        load_config(options_file(tmp_path), ROOT)
    with pytest.raises(ConfigError, match="phase2 must not reuse the first run's optimizer"):
        load_two_run(options_file(tmp_path), [*ROOT, "train.two_run.phase2.G_optimizer_reuse=true"])


def manifest(out) -> dict:
    return json.loads((out / "two_run_state.json").read_text())


@pytest.mark.dist
@pytest.mark.slow
def test_two_runs_in_one_command_resume_in_the_second_run(data, tmp_path):
    options = options_file(tmp_path)
    command = dict(base_sets=(), sets=["DATALOADER.TOTAL_WORKERS=0"], extra=["--config", options])
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    proc = run_train(data, straight, **command)
    assert proc.returncode == 0, output_of(proc)
    assert {r["state"] for r in manifest(straight)["runs"].values()} == {"done"}
    assert f"Initialised weights from {straight / 'phase1/ckpts/step_000002'}" in proc.stdout, output_of(proc)
    steps = [step for _, step in saved_group_settings(open_tag(straight / "phase2/ckpts/step_000001"))]
    assert steps == [1.0, 1.0]  # phase 2's optimizer is a fresh one (the fusion and adapters; spynet): one step

    stopped = {**command, "extra": ["--config", options, "--stop-at-step", "3"]}  # phase 2's step 1
    proc = run_train(data, pieces, **stopped)
    assert proc.returncode == 0, output_of(proc)
    runs = manifest(pieces)["runs"]
    assert (runs["phase1"]["state"], runs["phase2"]["state"]) == ("done", "running")
    proc = run_train(data, pieces, **command)
    assert proc.returncode == 0, output_of(proc)
    assert "phase1 is done" in proc.stdout and "Resuming from step 1" in proc.stdout, output_of(proc)
    assert manifest(pieces)["runs"]["phase2"]["state"] == "done"
    a = torch.load(straight / "phase2/ckpts/last.pth", weights_only=True)["state_dict"]
    b = torch.load(pieces / "phase2/ckpts/last.pth", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
