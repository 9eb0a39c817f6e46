"""LoRA adapters: S-VRT's names, targets and order, the adapted forward, folding, loading plain weights, freezing."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ds_deblur.ckpt.weights import load_weights, lora_scaling
from ds_deblur.config import load_config
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.models.lora import fold
from ds_deblur.zero.staged import freeze
from support.train_utils import model_from_sets
from tests.ckpt.test_svrt_files import NETG

SVRT = ["DATA.SPIKE_REPR=tfp", "DATA.K=4", "DATA.CLIP_LEN=2", "MODEL.NETG=" + json.dumps(NETG)]
OURS = ["MODEL.PRESET=tiny", "DATA.K=4", "DATA.CLIP_LEN=2"]
LORA = ["MODEL.LORA_RANK=2", "MODEL.LORA_ALPHA=6"]
EXCLUDED = ("fusion_adapter", "fusion_operator", "mamba_token_mixer", "pa_deform", ".dcn.", "spynet")


def config(sets):
    return load_config({"DATA": {"ROOT": "/unused"}}, sets)


def svrt_rule_keys(plain: nn.Module, targets=("qkv", "proj")) -> list[str]:
    """The keys S-VRT's inject_lora gives, written out: each nn.Linear whose own name holds a target, outside the
    fusion module, flow net and alignment, keeps its place with base.weight, base.bias, lora_A.weight, lora_B."""
    adapted = {name for name, m in plain.named_modules() if isinstance(m, nn.Linear)
               and any(t in name.rpartition(".")[2] for t in targets) and not any(p in name for p in EXCLUDED)}
    keys = []
    for key in plain.state_dict():
        layer, _, leaf = key.rpartition(".")
        if layer not in adapted:
            keys.append(key)
        elif leaf == "weight":
            keys += [f"{layer}.base.weight"] + ([f"{layer}.base.bias"] if f"{layer}.bias" in plain.state_dict()
                                                 else []) + [f"{layer}.lora_A.weight", f"{layer}.lora_B.weight"]
    return keys


@pytest.mark.parametrize("family", [SVRT, OURS], ids=["svrt", "ours"])
def test_adapters_have_svrt_names_targets_and_order(family):
    plain, lora = model_from_sets(family), model_from_sets(family + LORA)
    assert list(lora.state_dict()) == svrt_rule_keys(plain)
    assert any(".qkv_self.lora_A." in k for k in lora.state_dict())
    assert not any(".lora_" in k for k in lora.state_dict() if k.startswith(("fusion_", "spynet")))
    state = lora.state_dict()
    for key in (k for k in state if k.endswith("lora_A.weight")):
        assert state[key].shape[0] == 2 and not state[key.replace("lora_A", "lora_B")].any()
    targeted = model_from_sets(family + LORA + ["MODEL.LORA_TARGETS=[qkv]"])
    assert list(targeted.state_dict()) == svrt_rule_keys(plain, ("qkv",))


def test_adapted_forward_is_base_plus_scaled_update_and_folds_exactly():
    plain, lora = model_from_sets(SVRT), model_from_sets(SVRT + LORA)
    state = lora.state_dict()
    torch.manual_seed(1)
    for key in (k for k in state if ".lora_" in k):
        state[key] = torch.randn_like(state[key]) * 0.1
    lora.load_state_dict(state)
    merged = fold(state, 3.0)  # alpha 6 / rank 2
    layers = [k[:-len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")]
    for layer in layers:  # W + B A (alpha / rank), from the definition
        delta = state[f"{layer}.lora_B.weight"] @ state[f"{layer}.lora_A.weight"]
        expected = state[f"{layer}.base.weight"] + delta * 3.0
        torch.testing.assert_close(merged[f"{layer}.weight"], expected, rtol=0, atol=0)
        assert torch.equal(merged[f"{layer}.bias"], state[f"{layer}.base.bias"])
    assert list(merged)[-2 * len(layers):] == [f"{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    assert sorted(merged) == sorted(plain.state_dict())
    plain.load_state_dict(merged)  # strict: the plain network's keys
    plain.eval(), lora.eval()
    blur, spike = torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lora(blur, spike), plain(blur, spike), rtol=1e-4, atol=1e-5)


def test_plain_weights_fill_the_base_layers_and_adapted_files_load_strict(tmp_path):
    plain, lora = model_from_sets(SVRT, seed=1), model_from_sets(SVRT + LORA, seed=2)
    torch.save(plain.state_dict(), tmp_path / "1000_G.pth")
    adapters = {k: v.clone() for k, v in lora.state_dict().items() if ".lora_" in k}
    load_weights(lora, tmp_path / "1000_G.pth")
    state = lora.state_dict()
    for key, value in plain.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        assert torch.equal(state.get(key, state.get(f"{layer}.base.{leaf}")), value), key
    assert all(torch.equal(state[k], v) for k, v in adapters.items())  # adapters as initialised
    torch.save(state, tmp_path / "2000_G.pth")  # a file with adapters: strict, adapters included
    again = model_from_sets(SVRT + LORA, seed=3)
    load_weights(again, tmp_path / "2000_G.pth")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())
    torch.save({k: v for k, v in state.items() if "lora_B" not in k}, tmp_path / "3000_G.pth")
    with pytest.raises(CheckpointFormatError, match="missing"):
        load_weights(again, tmp_path / "3000_G.pth")


def test_freezing_keeps_the_base_layers_or_the_whole_backbone_out_of_training():
    model = model_from_sets(SVRT + LORA)
    frozen = set(freeze(model, config(SVRT + LORA)))
    assert frozen == {k for k in dict(model.named_parameters()) if ".base." in k}
    model = model_from_sets(SVRT + LORA + ["TRAIN.FREEZE_BACKBONE=true"])
    freeze(model, config(SVRT + LORA + ["TRAIN.FREEZE_BACKBONE=true"]))
    trained = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trained == {k for k in dict(model.named_parameters())
                       if k.startswith(("fusion_operator.", "fusion_adapter.")) or ".lora_" in k}
    unfrozen = model_from_sets(SVRT + LORA + ["MODEL.LORA_FREEZE_BASE=false"])
    assert freeze(unfrozen, config(SVRT + LORA + ["MODEL.LORA_FREEZE_BASE=false"])) == []


def test_merge_scaling_comes_from_the_runs_config():
    assert lora_scaling({"MODEL": {"LORA_RANK": 2, "LORA_ALPHA": 4.0}}, "tag") == 2.0
    with pytest.raises(CheckpointFormatError, match="tag was trained without LoRA.*leave out --merge-lora"):
        lora_scaling({"MODEL": {"LORA_RANK": 0}}, "tag")
