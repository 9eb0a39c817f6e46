"""S-VRT's own weights files ({iter}_G.pth, {iter}_E.pth, {iter}_G_merged.pth: flat state dicts, keys unprefixed)
through every load path: --init-weights, --resume of a file, inspect, and an S-VRT option file's pretrained_netG."""
from __future__ import annotations

import json

import pytest
import torch

from ds_deblur.ckpt.cli import inspect_main
from ds_deblur.ckpt.single_file import load_single_file
from ds_deblur.ckpt.weights import load_weights
from ds_deblur.config import load_config
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.models import build_model
from ds_deblur.models.svrt.net import SVRTNet
from ds_deblur.run_log import read_train_log
from support.train_utils import model_from_sets, output_of, run_train
from tests.ckpt.test_resume import SVRT_DATA

NETG = dict(net_type="vrt", upscale=1, img_size=[2, 64, 64], window_size=[2, 8, 8], depths=[1] * 8,
            indep_reconsts=[7], embed_dims=[16] * 8, num_heads=[2] * 8, pa_frames=2, deformable_groups=2,
            input=dict(strategy="fusion", mode="dual", raw_ingress_chans=7),
            fusion=dict(placement="early", operator="gated"), optical_flow=dict(module="spynet", checkpoint=None))


def option_file(tmp_path, pretrained=None):
    """An S-VRT option file of our own making (S-VRT's carry credentials; none is copied)."""
    opt = {"task": "gated_tiny", "path": {"root": str(tmp_path / "experiments"), "pretrained_netG": pretrained},
           "datasets": {split: {"dataroot_gt": f"/data/GOPRO_Large/{split}_GT",
                                "dataroot_lq": f"/data/GOPRO_Large/{split}_GT_blurred",
                                "dataroot_spike": f"/data/GOPRO_Large_spike_seq/{split}",
                                "spike_channels": 4, "num_frame": 2, "gt_size": 64,
                                "spike": {"representation": "tfp"}} for split in ("train", "test")},
           "netG": NETG, "train": {"total_iter": 10, "G_scheduler_type": "CosineAnnealingWarmRestarts",
                                   "G_scheduler_periods": 10}}
    path = tmp_path / "gated_tiny.json"
    path.write_text("// written by the test\n" + json.dumps(opt, indent=1))
    return path


def model(tmp_path, seed: int) -> SVRTNet:
    torch.manual_seed(seed)
    return build_model(load_config(option_file(tmp_path)))


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_an_option_file_builds_svrt_network(tmp_path):
    net = model(tmp_path, 0)
    assert isinstance(net, SVRTNet) and list(net.state_dict())[0].startswith("fusion_operator.")
    cfg = load_config(option_file(tmp_path), ["netG.fusion.operator=concat"])
    assert build_model(cfg).fusion_operator.__class__.__name__ == "ConcatFusion"


def test_g_and_e_files_load_on_every_path(tmp_path, capsys):
    models = tmp_path / "experiments/gated_tiny/models"
    models.mkdir(parents=True)
    g, e = model(tmp_path, 1).state_dict(), model(tmp_path, 2).state_dict()
    torch.save(g, models / "1000_G.pth")
    torch.save(e, models / "1000_E.pth")
    torch.save(g, models / "1000_G_merged.pth")  # no LoRA: the merged file is the plain one

    for name in ("1000_G.pth", "1000_G_merged.pth"):  # --init-weights
        target = model(tmp_path, 3)
        load_weights(target, models / name)
        assert same(target.state_dict(), g)
    resumed = load_single_file(models / "1000_G.pth")  # --resume FILE: iteration 1000, its _E beside it as EMA
    assert resumed["step"] == 1000 and resumed["optimizer"] is None and resumed["scheduler"] is None
    assert same(resumed["state_dict"], g) and same(resumed["state_dict_ema"], e)
    torch.save(g, tmp_path / "2000_G.pth")
    assert load_single_file(tmp_path / "2000_G.pth")["state_dict_ema"] is None
    assert inspect_main([str(models / "1000_G.pth")]) == 0
    assert str(len(g)) in capsys.readouterr().out
    cfg = load_config(option_file(tmp_path, pretrained=str(models / "1000_G.pth")))  # path.pretrained_netG
    assert cfg.MODEL.INIT_WEIGHTS == str(models / "1000_G.pth")


def test_a_file_of_another_network_is_refused_naming_keys(tmp_path):
    other = build_model(load_config(option_file(tmp_path), ["netG.fusion.operator=concat"])).state_dict()
    torch.save(other, tmp_path / "1000_G.pth")
    with pytest.raises(CheckpointFormatError, match="fusion_operator"):
        load_weights(model(tmp_path, 0), tmp_path / "1000_G.pth")


@pytest.mark.dist
@pytest.mark.slow
def test_an_svrt_experiment_folder_continues_with_its_adam_moments_in_its_phase(data, tmp_path):
    # S-VRT's fix_iter 4 (TRAIN.FIX_ITER 3): its iterations 1-3 are phase 1; fix_lr_mul splits spynet into a group.
    recipe = ["TRAIN.FUSION_FIRST=true", "TRAIN.FIX_ITER=3", "LOSS.FUSION.PHASE1_WEIGHT=1", "TRAIN.FIX_KEYS=[spynet]",
              "TRAIN.FIX_LR_MUL=0.5"]
    sets = [*SVRT_DATA, "DATA.K=4", "DATA.CLIP_LEN=2", "MODEL.NETG=" + json.dumps(NETG), "TRAIN.EMA_DECAY=0.999"]
    net = model_from_sets(sets, seed=0)
    named = list(net.named_parameters())
    split = [[p for n, p in named if "spynet" not in n], [p for n, p in named if "spynet" in n]]
    adam = torch.optim.Adam([{"params": split[0]}, {"params": split[1], "lr": 5e-4}], lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):  # S-VRT's iterations 1 and 2, phase 1: the fusion adapter's forward alone has gradients
        adam.zero_grad()
        frames, _ = net.fusion_adapter(torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 4, 64, 64))
        frames.square().mean().backward()
        adam.step()
    models = tmp_path / "experiments/gated_tiny/models"
    models.mkdir(parents=True)
    # EMA weights: the parameters' averages (both registrations of the fusion module); buffers are the network's
    ema = {k: v.detach() + 0.5 if isinstance(v, torch.nn.Parameter) else v
           for k, v in net.state_dict(keep_vars=True).items()}
    torch.save(model_from_sets(sets, seed=9).state_dict(), models / "1_G.pth")  # an older save
    torch.save(net.state_dict(), models / "2_G.pth")
    torch.save(ema, models / "2_E.pth")
    torch.save(adam.state_dict(), models / "2_optimizerG.pth")
    out = tmp_path / "run"  # the newest files, on 2 ranks under ZeRO 2, saved again at once
    proc = run_train(data, out, sets=[*sets, *recipe], extra=["--resume", str(models), "--stop-at-step", "2"])
    assert proc.returncode == 0, output_of(proc)
    assert "S-VRT's iteration 2: weights, EMA, Adam moments carried over" in proc.stdout
    saved = load_single_file(out / "ckpts/last.pth")
    assert saved["step"] == 2 and same(saved["state_dict"], net.state_dict())
    assert same(saved["state_dict_ema"], ema)
    position = {id(p): i for i, (_, p) in enumerate(named)}
    theirs, ours = adam.state_dict()["state"], saved["optimizer"]["state"]
    order = [position[id(p)] for group in split for p in group]  # S-VRT numbers its groups one after the other
    assert theirs and all(order[k] in ours for k in theirs)
    for k, moments in theirs.items():
        assert float(ours[order[k]]["step"]) == 2.0
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(ours[order[k]][key], moments[key]), (k, key)
    proc = run_train(data, out, sets=[*sets, *recipe], extra=["--resume", "auto", "--stop-at-step", "4"])
    assert proc.returncode == 0, output_of(proc)
    assert [(r["step"], r["phase"]) for r in read_train_log(out)] == [(3, 1), (4, 2)]  # S-VRT's iteration 3: phase 1
    torch.save({"state": {0: {"exp_avg": torch.zeros(1)}}, "param_groups": []}, models / "2_optimizerG.pth")
    with pytest.raises(CheckpointFormatError, match="2_optimizerG.pth is not a torch Adam state dict"):
        load_single_file(models / "2_G.pth")
