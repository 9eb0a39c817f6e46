"""Reading a DeepSpeed tag offline: rank 0's model states, our client state, and every rank's ZeRO partitions
gathered back into whole fp32 tensors (weights, and the AdamW moments for the single file).

How ZeRO lays the state out (DeepSpeed 0.19): each rank's ``*_optim_states.pt`` holds flat fp32 vectors and the
AdamW moments of the same layout.
- ZeRO 1/2: per parameter group one vector of all the group's parameters in ``param_shapes`` order (each followed
  by its alignment padding), cut into equal rank partitions; the last rank's fp32 vector has the tail padding
  removed, its moments keep it.
- ZeRO 3: every parameter is cut into ``ceil(numel / world)`` pieces; rank r's vector of a sub-group is its piece
  of each of the sub-group's parameters in turn (the last piece padded).
Buffers are only in the model-states file (``module``), as are the names that order ``model.parameters()``.
Frozen parameters (``requires_grad=False``: TRAIN.FREEZE) have no fp32 partition: ZeRO 1/2 keep them whole in
``module`` (from ZeRO 2 on also under ``frozen_param_fragments``); ZeRO 3 cuts them like its other parameters and
each rank's own model-states file holds its piece (``frozen_param_fragments``, the last one padded).
EMA weights (TRAIN.EMA_DECAY, ``ds_deblur.zero.ema``): each rank's ``ema_rank{r}.pt`` holds flat vectors with the layout of
its fp32 partitions, so they are gathered with the same pieces.

Memory: the ranks' files are memory-mapped and read one at a time, each piece copied straight into the output
tensor, so the peak is the output (weights; + 2 moments for the full file) plus one rank's share.

Trust: DeepSpeed pickles Python objects into its tag files (loss scaler, enums), so they are unpickled in full.
Only read tags from your own runs. The single files we write are plain tensors and containers and are always read
back with ``weights_only=True`` (``ds_deblur.ckpt.single_file``).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ds_deblur.errors import CheckpointFormatError
from ds_deblur.models import rename_legacy_keys
from ds_deblur.zero.ema import ema_file, read_ema_file
from ds_deblur.zero.setup import precision_of, zero_stage_of

CLIENT_KEY = "ds_deblur"
_MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
_OPTIM_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")

# One piece of a parameter inside a rank's flat vector: (name, offset in the parameter, offset in the vector, length)
Piece = tuple[str, int, int, int]


def load_pickled(path: Path) -> dict:
    """A DeepSpeed tag file: full unpickling (it holds Python objects), memory-mapped so tensors load on touch."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # torch raises several types for damaged archives; all mean the same to the user
        raise CheckpointFormatError(f"{path} cannot be read ({type(err).__name__}: {err})") from None


@dataclass
class Tag:
    """An opened tag: rank 0's model states (``header``, memory-mapped), our client state, every rank's optimizer
    file, and the run's shape as DeepSpeed recorded it."""
    dir: Path
    header: dict
    state: dict
    optim_files: list[Path]
    stage: int
    world_size: int
    precision: str


def open_tag(tag_dir: Path) -> Tag:
    model_file = next((tag_dir / n for n in _MODEL_STATES if (tag_dir / n).is_file()), None)
    if model_file is None:
        raise CheckpointFormatError(f"{tag_dir} has no DeepSpeed model states ({' or '.join(_MODEL_STATES)})")
    header = load_pickled(model_file)
    state = header.get(CLIENT_KEY)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{model_file} has no '{CLIENT_KEY}' client state: this tag was not saved by "
                                    f"ds_deblur's trainer")
    stage, world = zero_stage_of(header["ds_config"]), int(header["dp_world_size"])
    if stage not in (1, 2, 3):
        raise CheckpointFormatError(f"{tag_dir} was saved with ZeRO stage {stage}; ds-deblur convert reads ZeRO 1, 2 "
                                    f"and 3 tags (all ds_configs/*.json use one of them)")
    return Tag(tag_dir, header, state, _optim_files(tag_dir, world), stage, world, precision_of(header["ds_config"]))


def _optim_files(tag_dir: Path, world: int) -> list[Path]:
    by_rank = {}
    for path in tag_dir.glob("*optim_states.pt"):
        match = _OPTIM_FILE.fullmatch(path.name)
        if match is None or match.group(2) != "00":
            raise CheckpointFormatError(f"{path}: unexpected optimizer file (ds_deblur trains without tensor or "
                                        f"pipeline parallelism, so only *_mp_rank_00_optim_states.pt occur)")
        by_rank[int(match.group(1))] = path
    if sorted(by_rank) != list(range(world)):
        raise CheckpointFormatError(f"{tag_dir} was saved by {world} ranks but has optimizer files for ranks "
                                    f"{sorted(by_rank)}")
    return [by_rank[rank] for rank in range(world)]


# ------------------------------------------------------------------------------------ gathering the partitions
def _zero12_pieces(shapes: dict, paddings: Optional[list[int]], start: int, length: int) -> list[Piece]:
    """The pieces of a ZeRO-1/2 group's parameters inside [start, start + length) of the group's flat vector."""
    pieces, offset = [], 0
    for i, (name, shape) in enumerate(shapes.items()):
        numel = math.prod(shape)
        lo, hi = max(offset, start), min(offset + numel, start + length)
        if lo < hi:
            pieces.append((name, lo - offset, lo - start, hi - lo))
        offset += numel + (paddings[i] if paddings else 0)
    return pieces


def _zero3_pieces(shapes: dict, rank: int, world: int) -> list[Piece]:
    """Rank ``rank``'s pieces of a ZeRO-3 sub-group's parameters, in the order its flat vector holds them."""
    pieces, offset = [], 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        share = math.ceil(numel / world)
        lo, hi = rank * share, min((rank + 1) * share, numel)
        if lo < hi:
            pieces.append((name, lo, offset, hi - lo))
        offset += share
    return pieces


@dataclass
class Gathered:
    """Whole fp32 tensors rebuilt from the partitions, keyed by parameter name (``weights`` and ``ema`` include the
    frozen parameters, which never change)."""
    weights: dict[str, torch.Tensor]
    moments: dict[str, dict[str, torch.Tensor]]  # optimizer state key (exp_avg, exp_avg_sq) -> name -> tensor
    steps: dict[str, float]
    param_groups: list[dict]
    loss_scaler: Optional[dict]
    ema: Optional[dict[str, torch.Tensor]] = None  # None: gathered without, or the tag has no EMA
    group_names: list[list[str]] = field(default_factory=list)  # the trained parameters of each optimizer group
    frozen: list[str] = field(default_factory=list)


class _Gatherer:
    """Copies the ranks' pieces into whole fp32 tensors and counts what each tensor received."""

    def __init__(self, tag: Tag, with_moments: bool, with_ema: bool = False):
        self.tag, self.with_moments, self.with_ema = tag, with_moments, with_ema
        self.group_shapes = tag.header["param_shapes"]
        self.shapes = {name: shape for shapes in self.group_shapes for name, shape in shapes.items()}
        self.out: dict[str, dict[str, torch.Tensor]] = {"weight": {}}
        self.filled: Counter = Counter()
        self.steps: dict[str, float] = {}
        self.partition: dict[int, int] = {}  # ZeRO 1/2: numel of a full rank partition per group (rank 0's)
        self.param_groups: list[dict] = []
        self.group_names: list[list[str]] = []
        self.loss_scaler: Optional[dict] = None

    def read_rank(self, rank: int, path: Path) -> None:
        # A method of its own so that the rank's memory maps are released on return, before the next rank's.
        osd = load_pickled(path)["optimizer_state_dict"]
        flats, base = _flat_groups(osd, self.tag.stage, path)
        if len(flats) != len(self.group_shapes):
            raise CheckpointFormatError(f"{path} has {len(flats)} flat groups, the model states describe "
                                        f"{len(self.group_shapes)}")
        ema = _ema_flats(self.tag, rank, len(flats)) if self.with_ema else None
        paddings = osd.get("param_alignment_paddings")
        for g, (flat, shapes) in enumerate(zip(flats, self.group_shapes)):
            if self.tag.stage == 3:
                pieces = _zero3_pieces(shapes, rank, self.tag.world_size)
            else:
                start = rank * self.partition.setdefault(g, flat.numel())
                pieces = _zero12_pieces(shapes, paddings[g] if paddings else None, start, flat.numel())
            self._copy("weight", pieces, flat, path)
            if ema is not None:
                self._copy("ema", pieces, ema[g], ema_file(self.tag.dir, rank))
            for key, value in base["state"].get(g, {}).items() if self.with_moments else ():
                if torch.is_tensor(value) and value.dim() == 1:
                    self._copy(key, pieces, value, path)
                else:  # the step count of the whole flat group (a number, not a view into the mmap)
                    self.steps.update((name, float(value)) for name in shapes)
        if rank == 0:
            self.param_groups = [{k: v for k, v in group.items() if k != "params"} for group in base["param_groups"]]
            self.group_names = [[name for g in group["params"] for name in self.group_shapes[g]]
                                for group in base["param_groups"]]
            if self.tag.precision == "fp16":
                self.loss_scaler = loss_scaler_values(osd.get("loss_scaler"))

    def _copy(self, key: str, pieces: list[Piece], flat: torch.Tensor, source: Path) -> None:
        if pieces and max(src + n for _, _, src, n in pieces) > flat.numel():
            raise CheckpointFormatError(f"{source}: '{key}' holds {flat.numel()} values, fewer than the parameter "
                                        f"layout in the model states needs; the tag's files do not belong together")
        tensors = self.out.setdefault(key, {})
        flat = flat.detach()  # saved as a leaf requiring grad: a copy would link the output to the whole mmap
        for name, dst, src, n in pieces:
            if name not in tensors:
                tensors[name] = torch.empty(self.shapes[name], dtype=torch.float32)
            tensors[name].view(-1)[dst:dst + n] = flat[src:src + n]
            self.filled[key, name] += n

    def result(self) -> Gathered:
        for key, tensors in self.out.items():
            for name, tensor in tensors.items():
                if self.filled[key, name] != tensor.numel():
                    raise CheckpointFormatError(
                        f"{self.tag.dir}: '{key}' of parameter {name} has {self.filled[key, name]} of "
                        f"{tensor.numel()} values across the rank files; the tag is inconsistent")
        frozen = frozen_weights(self.tag)
        weights, ema = {**self.out["weight"], **frozen}, self.out.get("ema")
        moments = {key: tensors for key, tensors in self.out.items() if key not in ("weight", "ema")}
        return Gathered(weights, moments, self.steps, self.param_groups, self.loss_scaler,
                        ema={**ema, **frozen} if ema is not None else None, group_names=self.group_names,
                        frozen=list(frozen))


def gather(tag: Tag, with_moments: bool, with_ema: bool = False) -> Gathered:
    """Rebuild the fp32 weights (and the AdamW moments, and the EMA weights when the tag has them) of every
    parameter, one rank file at a time."""
    gatherer = _Gatherer(tag, with_moments, with_ema and has_ema(tag))
    for rank, path in enumerate(tag.optim_files):
        gatherer.read_rank(rank, path)
    return gatherer.result()


def has_ema(tag: Tag) -> bool:
    """Every rank saved its EMA partitions (TRAIN.EMA_DECAY > 0)."""
    return all(ema_file(tag.dir, rank).is_file() for rank in range(tag.world_size))


def _ema_flats(tag: Tag, rank: int, groups: int) -> list[torch.Tensor]:
    path = ema_file(tag.dir, rank)
    flats = read_ema_file(path)["flats"]
    if len(flats) != groups:
        raise CheckpointFormatError(f"{path} has {len(flats)} EMA partitions, the optimizer file {groups}")
    return flats


def frozen_names(tag: Tag) -> list[str]:
    """The frozen parameters (TRAIN.FREEZE): module entries that are neither trained nor buffers nor tied aliases."""
    header = tag.header
    skip = {name for shapes in header["param_shapes"] for name in shapes}
    skip |= set(header["buffer_names"]) | set(header.get("shared_params") or {})
    return [key for key in header["module"] if key not in skip]


def frozen_weights(tag: Tag) -> dict[str, torch.Tensor]:
    """fp32 values of the frozen parameters. ZeRO 1/2 keep them whole in ``module``; ZeRO 3 in pieces, one per
    rank's model-states file."""
    header, names = tag.header, frozen_names(tag)
    if tag.stage < 3 or not names:
        return {name: header["module"][name].to(torch.float32, copy=True) for name in names}
    shapes = header.get("frozen_param_shapes") or {}
    missing = [name for name in names if name not in shapes]
    if missing:
        raise CheckpointFormatError(f"{tag.dir}: module entries {missing[:3]} are neither trained, buffers nor "
                                    f"frozen parameters; the tag is inconsistent")
    out = {name: torch.empty(shapes[name], dtype=torch.float32) for name in names}
    for rank in range(tag.world_size):
        _copy_frozen_pieces(tag, rank, out)
    return out


def _copy_frozen_pieces(tag: Tag, rank: int, out: dict[str, torch.Tensor]) -> None:
    path = tag.dir / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
    if not path.is_file():
        raise CheckpointFormatError(f"{path} is missing: the tag's frozen parameters are cut over its ranks")
    fragments = load_pickled(path).get("frozen_param_fragments") or {}
    for name, tensor in out.items():
        share = math.ceil(tensor.numel() / tag.world_size)
        lo, hi = rank * share, min((rank + 1) * share, tensor.numel())
        if name not in fragments or fragments[name].numel() < hi - lo:
            raise CheckpointFormatError(f"{path} lacks its piece of frozen parameter {name}")
        if lo < hi:
            tensor.view(-1)[lo:hi] = fragments[name].detach().view(-1)[:hi - lo].float()


def _flat_groups(osd: dict, stage: int, path: Path) -> tuple[list[torch.Tensor], dict]:
    flats = osd.get("fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups")
    base = osd.get("optimizer_state_dict" if stage == 3 else "base_optimizer_state")
    if flats is None or base is None:
        raise CheckpointFormatError(f"{path} is not a ZeRO-{stage} optimizer file (no fp32 partitions)")
    if not isinstance(base, dict):
        raise CheckpointFormatError(f"{path} was saved with zero_optimization.elastic_checkpoint, which keeps no "
                                    f"optimizer hyperparameters; turn it off in the DeepSpeed JSON")
    return flats, base


def loss_scaler_values(scaler: Any) -> Optional[dict]:
    """DeepSpeed's loss scaler object as a dict of its numbers and flags (cur_scale, cur_iter, ...)."""
    if scaler is None:
        return None
    return {k: v for k, v in vars(scaler).items() if isinstance(v, (bool, int, float))}


# ------------------------------------------------------------------------------------------- building outputs
def module_state_dict(tag: Tag, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 weights and buffers in the module's own ``state_dict`` order, under the model's names (legacy
    spike-branch names mapped by ``rename_legacy_keys``)."""
    module, buffers = tag.header["module"], set(tag.header["buffer_names"])
    shared = tag.header.get("shared_params") or {}
    out = {}
    for key, value in module.items():
        if key in weights:
            out[key] = weights[key]
        elif key in shared:  # tied weights: the same tensor under a second name
            out[key] = weights[shared[key]]
        elif key in buffers:
            out[key] = value.to(torch.float32, copy=True) if value.is_floating_point() else value.clone()
        else:
            raise CheckpointFormatError(f"{tag.dir}: module entry {key} is neither a trained parameter nor a buffer")
    return rename_legacy_keys(out)


def has_legacy_names(tag: Tag) -> bool:
    """Saved by ds_deblur before its spike branch and fusion took the original S-VRT model's names."""
    return list(rename_legacy_keys(dict.fromkeys(tag.header["module"]))) != list(tag.header["module"])


def param_order(tag: Tag, weights: dict[str, torch.Tensor]) -> list[str]:
    # state_dict and parameters() walk the modules in the same order; tied aliases are not in ``weights``.
    return [key for key in tag.header["module"] if key in weights]


def fp32_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights and buffers of a complete tag as a plain ``nn.Module`` state dict."""
    tag = open_tag(tag_dir)
    return module_state_dict(tag, gather(tag, with_moments=False).weights)


def ema_state_dict(tag_dir: Path) -> Optional[dict[str, torch.Tensor]]:
    """The EMA weights (and the buffers) of a complete tag as a plain state dict; None when it has none."""
    tag = open_tag(tag_dir)
    if not has_ema(tag):
        return None
    return module_state_dict(tag, gather(tag, with_moments=False, with_ema=True).ema)


def saved_group_settings(tag: Tag) -> list[tuple[dict, Optional[float]]]:
    """(hyperparameters, Adam step) of each optimizer parameter group, as rank 0 saved them."""
    osd = load_pickled(tag.optim_files[0])["optimizer_state_dict"]
    _, base = _flat_groups(osd, tag.stage, tag.optim_files[0])
    settings = []
    for group in base["param_groups"]:
        state = base["state"].get(group["params"][0], {}) if group["params"] else {}
        settings.append(({k: v for k, v in group.items() if k != "params"},
                         float(state["step"]) if "step" in state else None))
    return settings


