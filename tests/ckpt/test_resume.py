"""Exact resume: a run of 2N steps equals N steps + resume + N steps, bit for bit (per-step losses and weights)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from ds_deblur.ckpt.single_file import single_file_dict
from ds_deblur.run_log import read_train_log
from support.train_utils import ONE_VAL_FRAME, REPO, ds_json, output_of, run_train, shm_buffers, train_command


def weights(run_dir) -> dict:
    return torch.load(run_dir / "ckpts/last.pth", weights_only=True)["state_dict"]


def check_exact_resume(data, tmp_path, config: str, ranks: int, env=None, val_every: int = 2,
                       extra_sets=(), steps: int = 6) -> list[dict]:
    """A run of ``steps`` steps and one of 3 + resume to the end give bitwise-equal train logs and final weights
    (validating one frame a sequence between steps: what matters is that validation leaves training alone)."""
    # 8 clips, 4 per rank and epoch on 2 ranks (8 on 1): at batch 1, step 3 of 6 falls in the middle of epoch 0.
    sets = [f"TRAIN.TOTAL_STEPS={steps}", f"LOG.VAL_EVERY_STEPS={val_every}", "LOG.SAVE_EVERY_STEPS=2",
            *ONE_VAL_FRAME, *extra_sets]
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    proc = run_train(data, straight, config, sets, ranks=ranks, env=env)
    assert proc.returncode == 0, output_of(proc)
    spike_repr = dict(item.split("=", 1) for item in sets).get("DATA.SPIKE_REPR", "voxel")
    assert f"[data] train spike input: {spike_repr}" in proc.stdout, output_of(proc)
    proc = run_train(data, pieces, config, sets, ranks=ranks, extra=["--stop-at-step", "3"], env=env)
    assert proc.returncode == 0, output_of(proc)
    assert [r["step"] for r in read_train_log(pieces)] == [1, 2, 3]
    proc = run_train(data, pieces, config, sets, ranks=ranks, extra=["--resume", "auto"], env=env)
    assert proc.returncode == 0, output_of(proc)
    assert "Resuming from step 3 (epoch " in proc.stdout
    log = read_train_log(pieces)
    assert log == read_train_log(straight)  # losses, LR, grad norms, loss scale: bitwise
    a, b = weights(straight), weights(pieces)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return log


# S-VRT's augmentations and TFP input: their draws come from each sample's own RNG, so they resume exactly too.
SVRT_DATA = ("DATA.SPIKE_REPR=tfp", "DATA.TFP_HALF_WIN_LENGTH=2", "DATA.ROTATE=true", "DATA.RANDOM_REVERSE=true",
             "DATA.NORM.MEAN=null", "DATA.NORM.STD=null")
# ... feeding S-VRT's early-fusion network (pase_residual on the 4 TFP images of each frame, SpyNet flow), whose
# fusion module is registered twice (fusion_operator.*, fusion_adapter.operator.*) as in S-VRT.
SVRT_NET = dict(net_type="vrt", upscale=1, img_size=[2, 64, 64], window_size=[2, 8, 8], depths=[1] * 8,
                indep_reconsts=[7], embed_dims=[16] * 8, num_heads=[2] * 8, pa_frames=2, deformable_groups=2,
                input=dict(strategy="fusion", mode="dual", raw_ingress_chans=7),
                fusion=dict(placement="early", operator="pase_residual", early=dict(frame_contract="collapsed"),
                            operator_params=dict(feature_chans=8, hidden_chans=8)),
                optical_flow=dict(module="spynet", checkpoint=None))
SVRT = SVRT_DATA + ("MODEL.NETG=" + json.dumps(SVRT_NET),)


# One rank and two, every ZeRO stage. S-VRT's data and network (with LoRA under ZeRO 2, without under ZeRO 3)
# resume across its phase switch in tests/train/test_phase_runs.py.
@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("stage, ranks", [(1, 2), (3, 2), (2, 1)], ids=["1-2", "3-2", "2-1"])
def test_resume_mid_epoch_is_exact(data, tmp_path, stage, ranks):
    check_exact_resume(data, tmp_path, ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage), ranks)


@pytest.mark.dist
@pytest.mark.slow
def test_fp16_resume_is_exact_including_the_loss_scaler(data, tmp_path):
    # The scaler moves on both sides of the cut: an injected overflow at step 2 halves it (no hysteresis), and
    # with a window of 2 clean steps it grows again after the cut, on the same step only if its counters were
    # restored. Validation only at the end: fp16 convolutions are slow on CPU.
    fp16 = {"enabled": True, "loss_scale": 0, "initial_scale_power": 8, "hysteresis": 1, "min_loss_scale": 1,
            "loss_scale_window": 2}
    config = ds_json(tmp_path, "ds_configs/zero2_fp16.json", fp16=fp16)
    env = {"DS_DEBLUR_ALLOW_CPU_FP16": "1", "DS_DEBLUR_INJECT_NONFINITE": "2"}
    log = check_exact_resume(data, tmp_path, config, 2, env, val_every=100, steps=5)
    scales = [r["loss_scale"] for r in log]
    assert scales[:3] == [256.0, 128.0, 128.0] and max(scales[3:]) > 128.0, scales


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("saved_on, stage, ranks, epochs", [
    (2, 3, 2, [0, 1, 1]),  # another ZeRO stage
    (2, 2, 1, [0, 0, 1]),  # 2 -> 1 rank: samples 7 and 8 of epoch 0, then epoch 1
    (1, 2, 2, [0, 0, 0]),  # 1 -> 2 ranks: the 5 samples left of epoch 0 over 3 steps (the last one padded)
])
def test_resume_from_last_pth_on_another_stage_or_world_size(data, tmp_path, saved_on, stage, ranks, epochs):
    # Saved with ZeRO 1, resumed from the single file with another ZeRO stage and/or world size.
    sets = ["TRAIN.TOTAL_STEPS=6", "LOG.VAL_EVERY_STEPS=100", "LOG.SAVE_EVERY_STEPS=2", *ONE_VAL_FRAME]
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    first = ds_json(tmp_path, "ds_configs/cpu_fp32.json", 1)
    proc = run_train(data, straight, first, sets, ranks=saved_on)
    assert proc.returncode == 0, output_of(proc)
    proc = run_train(data, pieces, first, sets, ranks=saved_on, extra=["--stop-at-step", "3"])
    assert proc.returncode == 0, output_of(proc)
    later = ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage)
    single = shutil.copy(pieces / "ckpts/last.pth", tmp_path / "step3.pth")
    # Loaded on the new stage / world size and saved at once: the very same state, sharded anew.
    proc = run_train(data, pieces, later, sets, ranks=ranks, extra=["--resume", single, "--stop-at-step", "3"])
    assert proc.returncode == 0, output_of(proc)
    assert "Resuming from step 3 (epoch " in proc.stdout
    a, b = torch.load(single, weights_only=True), single_file_dict(pieces / "ckpts/step_000003")
    assert (a["meta"]["world_size"], b["meta"]["world_size"]) == (saved_on, ranks)
    assert b["meta"]["zero_stage"] == stage and a["step"] == b["step"] == 3
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for index, moments in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments[key], b["optimizer"]["state"][index][key]), (index, key)
    assert a["scheduler"] == b["scheduler"] and a["meta"]["data"] == b["meta"]["data"]
    proc = run_train(data, pieces, later, sets, ranks=ranks, extra=["--resume", "auto"])
    assert proc.returncode == 0, output_of(proc)
    assert "Resuming from step 3 (epoch " in proc.stdout
    a, b = read_train_log(straight), read_train_log(pieces)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["lr"] for r in b] == [r["lr"] for r in a]  # the schedule continues where it was
    assert [r["epoch"] for r in b[3:]] == epochs  # and so does the data order, on the new world size
    if ranks == saved_on:  # same samples per step: the same training up to float rounding
        for x, y in zip(a[3:], b[3:]):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        # ZeRO-3 reduces gradients in another order than ZeRO-1, and Adam's normalised update can turn a
        # rounding-level difference of a near-zero gradient into a visible step on a single weight: compare
        # globally (measured: 9e-12 relative).
        wa, wb = weights(straight), weights(pieces)
        diff = torch.cat([(wa[k] - wb[k]).flatten() for k in wa]).norm()
        assert diff <= 1e-6 * torch.cat([w.flatten() for w in wa.values()]).norm()


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("stage, saved_on, ranks", [(3, 2, 1), (1, 1, 2)])
def test_sharded_tag_resumes_on_another_world_size(data, tmp_path, stage, saved_on, ranks):
    config = ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage)
    sets = ["TRAIN.TOTAL_STEPS=6", "LOG.VAL_EVERY_STEPS=100", "LOG.SAVE_EVERY_STEPS=2", *ONE_VAL_FRAME]
    first, resaved, continued = tmp_path / "first", tmp_path / "resaved", tmp_path / "continued"
    proc = run_train(data, first, config, sets, ranks=saved_on, extra=["--stop-at-step", "4"])
    assert proc.returncode == 0, output_of(proc)
    tag = first / "ckpts/step_000004"
    # Loaded on the other world size and saved at once: the very same state, sharded for the new world.
    proc = run_train(data, resaved, config, sets, ranks=ranks, extra=["--resume", str(tag), "--stop-at-step", "4"])
    assert proc.returncode == 0, output_of(proc)
    assert "universal checkpoint" in proc.stdout and "Converting" in proc.stdout
    a, b = single_file_dict(tag), single_file_dict(resaved / "ckpts/step_000004")
    assert (a["meta"]["world_size"], b["meta"]["world_size"]) == (saved_on, ranks)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for index, moments in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(moments[key], b["optimizer"]["state"][index][key]), (index, key)
    assert a["scheduler"] == b["scheduler"] and a["step"] == b["step"] == 4
    # And training goes on from there (the converted cache is reused, not built again).
    proc = run_train(data, continued, config, sets, ranks=ranks, extra=["--resume", str(tag)])
    assert proc.returncode == 0, output_of(proc)
    assert "Converting" not in proc.stdout and "Resuming from step 4" in proc.stdout
    log = read_train_log(continued)
    assert [r["step"] for r in log] == [5, 6] and all(r["loss"] > 0 for r in log)


def test_missing_checkpoint_is_an_error_not_a_fresh_start(data, tmp_path):
    for target in (tmp_path / "nope", tmp_path / "nope.pth"):
        proc = run_train(data, tmp_path / "run", sets=[], ranks=0, extra=["--resume", str(target)])
        assert proc.returncode == 2 and f"Checkpoint not found: {target}" in proc.stderr, output_of(proc)


@pytest.mark.dist
@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_exits_zero(data, tmp_path):
    out = tmp_path / "run"
    cmd = train_command(data, out, "ds_configs/cpu_fp32.json", ["TRAIN.TOTAL_STEPS=1000"], ranks=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "metrics/train_log.jsonl"
    deadline = time.time() + 300
    while (not log.exists() or len(log.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Stopped by signal after step" in stdout
    last = read_train_log(out)[-1]["step"]
    assert last < 1000 and (out / "ckpts/latest").read_text() == f"step_{last:06d}"
    assert (out / f"ckpts/step_{last:06d}/COMMIT.json").is_file()


@pytest.mark.dist
@pytest.mark.slow
def test_kill_during_a_save_leaves_latest_on_the_previous_complete_tag(data, tmp_path):
    out = tmp_path / "run"
    sets = ["TRAIN.TOTAL_STEPS=6", "LOG.VAL_EVERY_STEPS=100", "LOG.SAVE_EVERY_STEPS=2"]
    shm_before = shm_buffers()
    proc = run_train(data, out, sets=sets, env={"DS_DEBLUR_KILL_IN_SAVE": "step_000004"})
    assert proc.returncode != 0
    assert shm_buffers() <= shm_before  # a killed run leaves no RAM behind in /dev/shm either
    ckpts = out / "ckpts"
    assert (ckpts / "latest").read_text() == "step_000002"
    assert not (ckpts / "step_000004/COMMIT.json").exists()
    assert torch.load(ckpts / "last.pth", weights_only=True)["step"] == 2  # the single file is the good one too
    proc = run_train(data, out, sets=sets, extra=["--resume", "auto"])
    assert proc.returncode == 0, output_of(proc)
    assert "skipping incomplete checkpoint" in proc.stderr and "step_000004" in proc.stderr
    assert "Resuming from step 2" in proc.stdout
    assert [r["step"] for r in read_train_log(out)] == list(range(1, 7))


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("killed_at", [4, 6])  # mid-run, and in the export of the final tag
def test_kill_during_a_background_export_keeps_the_previous_file_whole(data, tmp_path, killed_at):
    out = tmp_path / "run"
    sets = ["TRAIN.TOTAL_STEPS=6", "LOG.VAL_EVERY_STEPS=100", "LOG.SAVE_EVERY_STEPS=2"]
    proc = run_train(data, out, sets=sets, env={"DS_DEBLUR_KILL_IN_EXPORT": f"step_{killed_at:06d}"})
    assert proc.returncode != 0
    ckpts = out / "ckpts"
    assert (ckpts / "latest").read_text() == f"step_{killed_at:06d}"  # committed before its export began
    assert torch.load(ckpts / "last.pth", weights_only=True)["step"] == killed_at - 2  # the previous file, whole
    assert [p.name for p in ckpts.glob(".last.pth.tmp-*")]  # the killed export's new file, never renamed
    proc = run_train(data, out, sets=sets, extra=["--resume", "auto"])
    assert proc.returncode == 0, output_of(proc)
    assert f"Resuming from step {killed_at}" in proc.stdout and "Re-exporting" in proc.stdout
    assert not list(ckpts.glob(".*.tmp-*"))  # the leftover was cleared
    assert torch.load(ckpts / "last.pth", weights_only=True)["step"] == 6
    assert [r["step"] for r in read_train_log(out)] == list(range(1, 7))  # and no step past the end


@pytest.mark.dist
@pytest.mark.slow
def test_reset_optimizer_keeps_weights_and_counters_with_a_fresh_schedule(data, tmp_path):
    # ZeRO-3: DeepSpeed's own weights-only load would ignore the tag; ours reads it.
    config = ds_json(tmp_path, "ds_configs/cpu_fp32.json", 3)
    out = tmp_path / "run"
    proc = run_train(data, out, config, ["TRAIN.TOTAL_STEPS=6"], extra=["--stop-at-step", "2"])
    assert proc.returncode == 0, output_of(proc)
    sets = ["TRAIN.TOTAL_STEPS=3", "TRAIN.OPTIM.LR=5e-4", "TRAIN.SCHED.WARMUP_STEPS=2"]
    proc = run_train(data, out, config, sets, extra=["--resume", str(out / "ckpts/step_000002"), "--reset-optimizer"])
    assert proc.returncode == 0, output_of(proc)
    assert "Resuming from step 2 (epoch 0)" in proc.stdout and "start fresh (--reset-optimizer)" in proc.stdout
    assert "TRAIN.OPTIM.LR: 0.002 -> 0.0005" in proc.stdout  # the original's spelling
    log = read_train_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[2]["lr"] == pytest.approx(5e-4 * 1e-3)  # a new warm-up at the new LR: the original's LinearLR start
