"""svrt: S-VRT's network family (``ds_deblur.models.svrt``) at the CPU demo's size beside our cross-attention model,
and what one S-VRT server recipe holds per rank under ZeRO 2.

Speed. Every early-fusion operator (concat, gated, attention, pase, pase_residual, mamba,
dual_scale_temporal_mamba, each with its default frame contract: concat, gated and pase expanded, so VRT restores
T*S sub-frames; the others collapsed, T frames), S-VRT's concat input strategy (RGB and spikes stacked, in_chans 7,
no fusion module), and middle and hybrid fusion (gated, after stage 1) are built from the netG of
``ds_configs/svrt_early_fusion_cpu.json`` (a tiny VRT: window 2x8x8, 8 stages of depth 2, width 16, 2 heads), with
only the fusion options changed: the file's operator_params for its own operator (pase_residual), S-VRT's defaults
for the others. Beside them: our model (``build_model``, the tiny preset of ``ds_configs/tiny_synth.yaml`` with
DATA.K=4, VRTWithSpike's cross-attention fusion) and that preset's RGB-only VRT (MODEL.USE_SPIKE=false). Each
takes one training step (forward, mean |output| loss, backward) on the same float32 input, B x T x H x W =
1 x 2 x 64 x 64 with S=4 spike channels (TFP images for S-VRT, voxel bins for ours), on the CPU. Each model is
warmed up by one step, whose peak memory is recorded as ``bench model`` does (rise of the process's peak RSS); then
the models take turns for ``--rounds`` rounds, so that load from other jobs falls on all of them alike, and the
table gives each one's median and minimum. Parameters: the total (shared modules once) and the fusion's (S-VRT:
``fusion_adapter``, which holds the operators, and the PASE spike encoder; ours: everything beside ``model.vrt``).

Memory per rank. ``ds_configs/svrt_server_pase_residual_scflow.json`` is built on the meta device (no weights are
allocated) and its parameters counted; the bytes each rank holds under ZeRO 2 follow from that count with the
roles and sharding rules of ``bench memory`` (ZeRO 2 shards gradients, fp32 master weights and Adam's two moments
over the ranks; every rank keeps all the weights): bf16 weights and gradients (2 + 2 bytes a parameter), or fp32
(4 + 4); fp32 master weights (4) and Adam moments (8) in both: ideal shares, without DeepSpeed's padding of the
partitions (2-3% in ``bench memory``). The same again with S-VRT's LoRA recipe (``LORA_SETS``: rank 8 adapters, the
backbone frozen as ``freeze_backbone`` freezes it, phase 2's ``fix_keys`` trained): every rank keeps all the
weights, but gradients, masters and Adam moments exist only for the fusion module, the adapters and the fix_keys. Not included: activations, because a training step at the recipe's crop
(6 frames of 192 x 192 with 9-frame raw spike windows) cannot be measured on a CPU machine: the base preset, of the
same width and depths, already needs 4.2 GB at 3 x 64 x 64 with activation checkpointing (``bench model``), and the
crop has 18 times those pixels; nor DeepSpeed's gradient buckets and the transient fp32 gradient partition at the
optimizer step.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ds_deblur.bench.common import MIB, REPO, format_table, positive_int, summary
from ds_deblur.bench.memory import ROLES, SHARDED_FROM
from ds_deblur.bench.model_speed import PeakMemory
from ds_deblur.config import load_config
from ds_deblur.config.kair import read_option_file
from ds_deblur.models.presets import build_model
from ds_deblur.models.svrt.net import SVRTNet
from ds_deblur.models.svrt.options import OPERATORS, parse_net_options
from ds_deblur.zero.staged import freeze

DEMO_CONFIG = REPO / "ds_configs/svrt_early_fusion_cpu.json"
SERVER_CONFIG = REPO / "ds_configs/svrt_server_pase_residual_scflow.json"
OURS_CONFIG = REPO / "ds_configs/tiny_synth.yaml"
BTHW = (1, 2, 64, 64)  # the CPU demo's batch: one clip of num_frame 2 at gt_size 64
SPIKE_CHANNELS = 4  # the demo's TFP images per frame; our model takes as many voxel bins (DATA.K)
# The other S-VRT ways in beside the early-fusion operators: the concat input strategy, and gated fusion of the
# stage-1 output (width 16) in the middle, alone and after early fusion (hybrid).
OTHER_SVRT = ("input_concat", "middle_gated", "hybrid_gated")
OURS = ("ours", "rgb_only")
MODELS = (*OPERATORS, *OTHER_SVRT, *OURS)
ZERO_STAGE = 2
# S-VRT's LoRA recipe: its use_lora defaults (rank 8, alpha 16, qkv and proj) with freeze_backbone.
LORA_SETS = ["MODEL.LORA_RANK=8", "MODEL.LORA_ALPHA=16", "TRAIN.FREEZE_BACKBONE=true"]
FULL_SETS = ["MODEL.LORA_RANK=0", "TRAIN.FREEZE_BACKBONE=false"]  # the same recipe trained whole
# Bytes a parameter costs in each of bench memory's roles. bf16: DeepSpeed's ZeRO optimizer keeps bf16 weights and
# gradients, fp32 master weights and two fp32 Adam moments (the ZeRO paper's 2 + 2 + 12). fp32: the engine keeps a
# separate fp32 master partition all the same (bench memory measured it from ZeRO 1 on).
BYTES_PER_PARAM = {"bf16": {"parameters": 2, "gradients": 2, "master_weights": 4, "optimizer_state": 8},
                   "fp32": {"parameters": 4, "gradients": 4, "master_weights": 4, "optimizer_state": 8}}
NOT_INCLUDED = ("activations (a step at the recipe's 6x192x192 crop is not measurable on a CPU: the base preset of "
                "the same width needs 4.2 GB at 3x64x64 with checkpointing, and the crop has 18x the pixels), "
                "DeepSpeed's gradient buckets, the transient fp32 gradient partition at the optimizer step; "
                "shares are ideal (no partition padding)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", "--operators", nargs="+", default=list(MODELS), choices=MODELS,
                        metavar="NAME", help=f"what to time (default: all): {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=positive_int, default=5,
                        help="timed training steps per model after one warm-up, the models taking turns")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--server-config", type=Path, default=SERVER_CONFIG,
                        help="the S-VRT option file whose memory per rank is computed")
    parser.add_argument("--world-sizes", type=positive_int, nargs="+", default=[1, 2, 4, 8])


def run(args: argparse.Namespace, work: Path) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {}
    for name in args.models:
        torch.manual_seed(0)
        models[name] = build_variant(name)
    b, t, h, w = BTHW
    torch.manual_seed(0)
    blur, spike = torch.rand(b, t, 3, h, w), torch.rand(b, t, SPIKE_CHANNELS, h, w)
    rows = {name: describe(name, model, t) for name, model in models.items()}
    peak = PeakMemory(torch.device("cpu"))
    for name, model in models.items():
        peak.start()
        train_step(model, blur, spike)  # warm-up; also the step whose peak is recorded
        rows[name]["peak_train_MiB"] = round(peak.stop(), 1)
        print(f"[bench svrt] {name}: warmed up ({rows[name]['params']} parameters)", flush=True)
    for round_ in range(args.rounds):
        for name, model in models.items():  # in turns: a burst of load slows every model, not one
            start = time.perf_counter()
            train_step(model, blur, spike)
            rows[name]["times_ms"].append((time.perf_counter() - start) * 1000)
        print(f"[bench svrt] round {round_ + 1}/{args.rounds} timed", flush=True)
    for row in rows.values():
        row["forward_backward_ms"] = summary(row["times_ms"])
    return {"settings": {"device": "cpu", "dtype": "float32", "threads": torch.get_num_threads(),
                         "rounds": args.rounds, "shape_BTSHW": [b, t, SPIKE_CHANNELS, h, w],
                         "demo_config": str(DEMO_CONFIG), "ours_config": str(OURS_CONFIG)},
            "rows": list(rows.values()), "memory": memory_per_rank(args.server_config, args.world_sizes)}


def demo_net(name: str) -> dict:
    """The CPU demo's netG with the fusion of ``name`` (an operator, or one of OTHER_SVRT)."""
    net = copy.deepcopy(read_option_file(DEMO_CONFIG)["netG"])
    fusion = net["fusion"]
    if name == "input_concat":
        net["input"] = {"strategy": "concat", "raw_ingress_chans": 3 + SPIKE_CHANNELS}
        net["fusion"] = {"enable": False}
    elif name in ("middle_gated", "hybrid_gated"):
        width = net["embed_dims"][0]  # the middle operator writes the stage's features back: its width
        net["fusion"] = {"enable": True, "placement": name.split("_")[0], "operator": "gated", "inject_stages": [1],
                         "early": {"out_chans": 3}, "middle": {"out_chans": width}}
    else:
        if name != fusion["operator"]:  # the file's operator_params and contract are its own operator's
            fusion.update(operator=name, operator_params={}, early={"frame_contract": "operator_default"})
    return net


def build_variant(name: str) -> nn.Module:
    """One of MODELS at the demo's size (float32, on the CPU)."""
    if name in OURS:
        sets = ["DATA.ROOT=unused", f"DATA.K={SPIKE_CHANNELS}"] + (["MODEL.USE_SPIKE=false"] * (name == "rgb_only"))
        return build_model(load_config(OURS_CONFIG, sets))
    return SVRTNet(parse_net_options(demo_net(name), "tfp"))


def _count(modules: Iterable[nn.Module]) -> int:
    """Parameters of ``modules``, each counted once (S-VRT registers its fusion operator under two names)."""
    unique = {id(p): p for module in modules for p in module.parameters()}
    return sum(p.numel() for p in unique.values())


def fusion_modules(model: nn.Module) -> list[nn.Module]:
    """What a model adds to its VRT backbone to take spikes in."""
    if isinstance(model, SVRTNet):
        return [getattr(model, name) for name in ("spike_encoder", "fusion_adapter") if hasattr(model, name)]
    return [module for name, module in model.named_children() if name != "vrt"]  # VRTWithSpike


def describe(name: str, model: nn.Module, frames: int) -> dict:
    """A result row: the model's parameter counts, how it fuses and how many frames its VRT restores."""
    vrt_frames = frames
    if not isinstance(model, SVRTNet):
        how = "cross-attention after stages 1-4" if model.use_spike else "none (RGB only)"
    elif not model.options.fusion:
        how = "input concat"
    elif model.options.placement == "middle":
        how = "middle"
    else:  # early or hybrid: the frame contract decides what the backbone restores
        how = f"{model.options.placement}, {model.options.contract}"
        if model.options.contract == "expanded":
            vrt_frames = frames * model.options.spike_chans
    return {"name": name, "family": "S-VRT" if isinstance(model, SVRTNet) else "ours", "fusion": how,
            "vrt_frames": vrt_frames, "params": _count([model]), "fusion_params": _count(fusion_modules(model)),
            "times_ms": []}


def train_step(model: nn.Module, blur: torch.Tensor, spike: torch.Tensor) -> None:
    model.train()(blur, spike).abs().mean().backward()
    model.zero_grad(set_to_none=True)


def server_model(config: Path, sets: Iterable[str] = ()) -> nn.Module:
    """The recipe's network (with ``sets``) on the meta device, its frozen parameters marked as the trainer marks
    them: shapes only, no memory, no weight files read."""
    with warnings.catch_warnings():  # the option file's launcher keys (gpu_ids, dist) mean nothing here
        warnings.simplefilter("ignore")
        cfg = load_config(config, ["MODEL.INIT_WEIGHTS=null", "netG.optical_flow.checkpoint=null", *sets])
    with torch.device("meta"):
        model = build_model(cfg)
    freeze(model, cfg)
    return model


def per_rank_mib(params: int, precision: str, world: int, stage: int = ZERO_STAGE,
                 trained: Optional[int] = None) -> dict[str, float]:
    """MiB of each role one rank holds for ``params`` parameters of which ``trained`` (default: all) train: the
    frozen ones have only weights; what ``stage`` shards is 1/``world`` of it."""
    counts = {role: params if role == "parameters" or trained is None else trained for role in ROLES}
    held = {role: counts[role] * BYTES_PER_PARAM[precision][role] / (world if stage >= SHARDED_FROM[role] else 1)
            / MIB for role in ROLES}
    return {**{f"{role}_mib": value for role, value in held.items()}, "total_mib": sum(held.values())}


def memory_per_rank(config: Path, world_sizes: Iterable[int]) -> dict:
    """Per rank, the recipe trained whole and with LoRA adapters on a frozen backbone (LORA_SETS)."""
    model, lora = server_model(config, FULL_SETS), server_model(config, LORA_SETS)
    params, lora_params = _count([model]), _count([lora])
    trained = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    return {"config": str(config), "zero_stage": ZERO_STAGE, "params": params,
            "fusion_params": _count(fusion_modules(model)), "bytes_per_param": BYTES_PER_PARAM,
            "not_included": NOT_INCLUDED,
            "rows": [{"precision": precision, "world_size": world, **per_rank_mib(params, precision, world)}
                     for precision in BYTES_PER_PARAM for world in world_sizes],
            "lora": {"sets": LORA_SETS, "params": lora_params, "trained_params": trained,
                     "rows": [{"precision": precision, "world_size": world,
                               **per_rank_mib(lora_params, precision, world, trained=trained)}
                              for precision in BYTES_PER_PARAM for world in world_sizes]}}


def _millions(count: int) -> str:
    return f"{count / 1e6:.3f} M"


def table(results: dict) -> str:
    speed = format_table(
        ["model", "fusion", "VRT frames", "params", "fusion params", "fwd+bwd median ms", "min ms", "peak MiB"],
        [[r["name"], r["fusion"], r["vrt_frames"], _millions(r["params"]), _millions(r["fusion_params"]),
          f"{r['forward_backward_ms']['median']:.0f}", f"{r['forward_backward_ms']['min']:.0f}",
          f"{r['peak_train_MiB']:.0f}"] for r in results["rows"]])
    s = results["settings"]
    memory = results["memory"]
    per_rank, lora = _per_rank_table(memory["rows"]), memory["lora"]
    return "\n".join([
        f"Training step, B x T x S x H x W = {' x '.join(map(str, s['shape_BTSHW']))}, {s['dtype']}, CPU, "
        f"{s['threads']} thread{'s' if s['threads'] > 1 else ''}, median and min of {s['rounds']} rounds after a "
        "warm-up:", speed, "",
        f"Per rank under ZeRO {memory['zero_stage']}: {Path(memory['config']).name}, "
        f"{_millions(memory['params'])} parameters ({_millions(memory['fusion_params'])} in the fusion):",
        per_rank, "",
        f"With LoRA adapters on a frozen backbone ({', '.join(lora['sets'])}): {_millions(lora['params'])} "
        f"parameters, {_millions(lora['trained_params'])} trained (the fusion and the adapters):",
        _per_rank_table(lora["rows"]), f"Not included: {memory['not_included']}."])


def _per_rank_table(rows: list[dict]) -> str:
    return format_table(
        ["precision", "ranks", "weights MiB", "grads MiB", "fp32 master MiB", "Adam MiB", "total MiB"],
        [[m["precision"], m["world_size"], *(f"{m[f'{role}_mib']:.1f}" for role in ROLES), f"{m['total_mib']:.1f}"]
         for m in rows])
