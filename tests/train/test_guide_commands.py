"""The original trainer's guide, run as written (ds_deblur/train.py for src/train.py, no --deepspeed_config) with
a copy of its own baseline config: tiny preset and synthetic data via --set. Also DeepSpeed's own zero_to_fp32.py
in the checkpoint folder, and the LRs of the run against torch's schedulers."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from ds_deblur.distributed import free_port
from ds_deblur.losses import VGG16_LAYERS, _vgg16_features
from ds_deblur.run_log import read_train_log
from support.original_trainer import original_lrs, write_reference_copy
from support.train_utils import REPO, output_of

SCRIPT = str(REPO / "ds_deblur/train.py")
WARMUP, STEPS = 3, 8


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """Random VGG16 features up to relu3_3 (what LOSS.VGG_PERCEPTUAL of the reference compares), torchvision keys."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    torch.save({f"features.{k}": v for k, v in _vgg16_features(VGG16_LAYERS["relu3_3"]).state_dict().items()}, path)
    return path


def tiny_sets(data, out, *extra: str) -> list[str]:
    """What makes the original's baseline config a CPU test: the tiny model, synthetic data, a short run."""
    sets = [f"DATA.ROOT={data}", f"LOG.SAVE_DIR={out}", "MODEL.PRESET=tiny", "MODEL.CHANNELS_PER_SCALE=null",
            "DATA.K=4", "DATA.CLIP_LEN=2", "DATA.CROP_SIZE=64", "DATA.USE_PRECOMPUTED_VOXELS=false",
            "DATALOADER.TOTAL_WORKERS=0", *extra]
    return [arg for item in sets for arg in ("--set", item)]


def run(cmd: list[str], cwd=REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_reference_config_trains_through_the_guide_command_line(data, vgg_file, tmp_path):
    config, out = write_reference_copy(tmp_path / "vrt_spike_baseline.yaml"), tmp_path / "outputs"
    # 8 clips of one rank = 8 batches per epoch; accumulation 2: EPOCHS 2 is 2 x (8 // 2) = 8 optimizer steps.
    proc = run([sys.executable, SCRIPT, "--config", str(config),
                *tiny_sets(data, out, "TRAIN.EPOCHS=2", "TRAIN.GRADIENT_ACCUMULATION_STEPS=2",
                           f"TRAIN.SCHED.WARMUP_STEPS={WARMUP}", "LOG.VAL_EVERY_STEPS=4", f"LOSS.VGG_PATH={vgg_file}")])
    assert proc.returncode == 0, output_of(proc)
    assert "[train] No --deepspeed_config: using the built-in engine config: ZeRO 2, fp32" in proc.stdout
    assert "MODEL.VRT_CFG third_party/VRT/options/deblur/vrt_base.yaml not found" in proc.stderr
    log = read_train_log(out)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1)) and all(r["skipped"] == 0 for r in log)
    want = original_lrs(1e-4, WARMUP, STEPS)
    assert max(abs(r["lr"] - w) / w for r, w in zip(log, want)) < 1e-9  # the original's schedule, step by step
    ckpts = out / "ckpts"
    # A save at each validation (LOG.SAVE_EVERY_STEPS unset), as the original saved at VAL_EVERY_STEPS.
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_000004", "step_000008"]
    assert sorted(p.name for p in (out / "metrics").glob("val_step_*.json")) == [
        "val_step_000004.json", "val_step_000008.json"]
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["TRAIN"]["OPTIM"]["LR"] == 1e-4 and "LR" not in written["TRAIN"]  # the original's spelling
    assert written["LOSS"]["VGG_PERCEPTUAL"] == {"LAYERS": ["relu3_3"], "WEIGHT": 0.1}
    assert list((out / "tb").glob("events.out.tfevents.*"))
    check_zero_to_fp32_in_the_checkpoint_folder(ckpts, tmp_path)


def check_zero_to_fp32_in_the_checkpoint_folder(ckpts, tmp_path) -> None:
    """DeepSpeed's documented export, `python zero_to_fp32.py . out_dir` in the folder save_checkpoint copied the
    script into, gives the weights of `ds-deblur convert CKPT --weights-only`."""
    assert (ckpts / "zero_to_fp32.py").is_file()
    proc = run([sys.executable, "zero_to_fp32.py", ".", "exported"], cwd=ckpts, timeout=300)
    assert proc.returncode == 0, output_of(proc)
    theirs = torch.load(ckpts / "exported" / "pytorch_model.bin", weights_only=True)
    proc = run([sys.executable, "-m", "ds_deblur", "convert", str(ckpts), "--weights-only", "--out",
                str(tmp_path / "model.pth")], timeout=300)
    assert proc.returncode == 0, output_of(proc)
    ours = torch.load(tmp_path / "model.pth", weights_only=True)
    assert set(ours) == set(theirs) and len(ours) > 100
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


@pytest.mark.slow
@pytest.mark.dist
def test_guide_torchrun_command_runs_on_two_ranks(data, tmp_path):
    config, out = write_reference_copy(tmp_path / "vrt_spike_baseline.yaml"), tmp_path / "outputs"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = run([torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", SCRIPT, "--config", str(config),
                *tiny_sets(data, out, "TRAIN.EPOCHS=1", "TRAIN.GRADIENT_ACCUMULATION_STEPS=2",
                           "LOSS.VGG_PERCEPTUAL.WEIGHT=0", "LOG.TENSORBOARD=false")])
    assert proc.returncode == 0, output_of(proc)
    assert proc.stdout.count("[train] No --deepspeed_config") == 1  # said once, by rank 0
    # 4 batches per rank and epoch, accumulation 2: 1 x (4 // 2) = 2 steps; warm-up 256 >= 2: cosine only.
    log = read_train_log(out)
    assert [r["step"] for r in log] == [1, 2] and log[0]["lr"] == 1e-4
    assert (out / "ckpts/step_000002/COMMIT.json").is_file()
    assert not (out / "tb").exists()  # LOG.TENSORBOARD: false
