"""Training losses: Charbonnier on pixels plus an optional VGG16 perceptual term, as the original trainer computes them.

- Charbonnier: ``mean(sqrt((pred - target)^2 + delta^2))`` with ``delta = 1e-3``. The constant inside the square
  root is ``delta**2`` (1e-6), not ``delta`` itself; BasicSR's ``CharbonnierLoss(eps=1e-12)`` puts ``eps`` inside
  unsquared, so BasicSR's eps=1e-12 corresponds to delta=1e-6 here.
- Perceptual: for each listed ReLU layer (``relu3_3`` by default) the mean L1 distance between VGG16 features of the
  prediction and of the target, averaged over the layers. Inputs are [0, 1] images normalised with ImageNet's
  mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) whatever file the weights come from: that is what the
  original applies, also to torchvision's IMAGENET1K_FEATURES weights (whose own transform would be
  [0, 255]-scaled input minus (0.48235, 0.45882, 0.40784)).
- Total loss = LOSS.CHARBONNIER.WEIGHT * charbonnier + LOSS.VGG_PERCEPTUAL.WEIGHT * perceptual.

VGG16 is built here (no torchvision) with torchvision's parameter names, so both of torchvision's VGG16 files load
directly (full ``VGG`` state dicts: ``features.<i>.*`` plus ``classifier.*``, which is NaN in the features file and
ignored here). Weights are never downloaded: LOSS.VGG_PATH names a local file; when it is null, torch's hub cache
is searched for the file the original trainer downloaded (``IMAGENET1K_FEATURES``), then for ``IMAGENET1K_V1``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ds_deblur.errors import WeightsNotFoundError

Say = Callable[[str], None]
Layers = Union[str, Sequence[str]]

_DOWNLOADS = "https://download.pytorch.org/models/"
# torchvision's VGG16 files by weights name, in the order a null LOSS.VGG_PATH looks for them in torch's hub cache:
# the original trainer's vgg16(weights=VGG16_Weights.IMAGENET1K_FEATURES) first.
HUB_VGG16_FILES = {"vgg16_features-amdegroot-88682ab5.pth": "IMAGENET1K_FEATURES",
                   "vgg16-397923af.pth": "IMAGENET1K_V1"}

# VGG16 "D" configuration: conv output channels, "M" = 2x2 max-pool. Expanding it with a ReLU after every conv
# reproduces torchvision's `features` indices, which the layer table below and the weight file keys rely on.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 1e-3) -> torch.Tensor:
    """``mean(sqrt((pred - target)^2 + delta^2))`` over all elements, computed in float32 or wider.

    Half-precision inputs are upcast: delta^2 = 1e-6 is below float16's normal range and would be lost.
    """
    dtype = torch.promote_types(pred.dtype, torch.float32)
    diff = pred.to(dtype) - target.to(dtype)
    return torch.sqrt(diff * diff + delta * delta).mean()


def hub_vgg16_path() -> Optional[Path]:
    """The first of ``HUB_VGG16_FILES`` present in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), else None."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return next((checkpoints / name for name in HUB_VGG16_FILES if (checkpoints / name).is_file()), None)


def find_vgg16_weights(vgg_path: Optional[Union[str, Path]]) -> tuple[Path, str]:
    """The VGG16 file the perceptual term loads (LOSS.VGG_PATH, else the hub cache's) and one line saying which."""
    if vgg_path is not None:
        return Path(vgg_path), f"[loss] VGG16 perceptual weights: {vgg_path} (LOSS.VGG_PATH)"
    found = hub_vgg16_path()
    if found is None:
        raise WeightsNotFoundError(_no_hub_file_error())
    return found, (f"[loss] VGG16 perceptual weights: {found} (torchvision's {HUB_VGG16_FILES[found.name]}, found in "
                   f"torch's hub cache because LOSS.VGG_PATH is null)")


def _no_hub_file_error() -> str:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    files = " nor ".join(f"{name} (torchvision's {weights})" for name, weights in HUB_VGG16_FILES.items())
    return (f"LOSS.VGG_PERCEPTUAL.WEIGHT > 0 needs VGG16 weights: LOSS.VGG_PATH is null and {checkpoints} holds "
            f"neither {files}. Weights are never downloaded: set LOSS.VGG_PATH to a local VGG16 file, or put "
            f"{_DOWNLOADS}{next(iter(HUB_VGG16_FILES))} (the original trainer's) into that folder, or set "
            f"LOSS.VGG_PERCEPTUAL.WEIGHT: 0.")


def _vgg16_features(last_index: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = item
    return nn.Sequential(*layers[: last_index + 1])


def _weights_error(path: Path, problem: str) -> str:
    names = " or ".join(f"{_DOWNLOADS}{name} ({weights})" for name, weights in HUB_VGG16_FILES.items())
    return (f"VGG16 weights {problem}: {path}. Weights are never downloaded at run time. Download torchvision's "
            f"VGG16 file ({names}), then set LOSS.VGG_PATH to the local file (or LOSS.VGG_PERCEPTUAL.WEIGHT: 0 to "
            f"train without the perceptual term).")


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise WeightsNotFoundError(_weights_error(path, "not found"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, weights_only refusals)
        raise RuntimeError(_weights_error(path, f"could not be read ({type(exc).__name__}: {exc})")) from exc
    if not isinstance(state, Mapping):
        raise RuntimeError(_weights_error(path, f"is not a state dict (got {type(state).__name__})"))
    return state


def _features_state(state: Mapping[str, Any], path: Path, wanted: nn.Sequential) -> dict[str, torch.Tensor]:
    """Select the keys for ``wanted`` from a full torchvision VGG16 or a features-only state dict.

    Accepted keys: ``features.{i}.weight|bias``, bare ``{i}.weight|bias`` (``vgg.features.state_dict()``) and
    ``classifier.*`` (ignored). Layers past the requested one are ignored too.
    """
    feature_key = re.compile(r"^(?:features\.)?(\d+)\.(weight|bias)$")
    picked: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        match = feature_key.match(key)
        if match:
            picked[f"{match.group(1)}.{match.group(2)}"] = value
        elif not key.startswith("classifier."):
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"{path} does not look like a VGG16 state dict: unexpected keys {unknown[:8]}"
            f"{' ...' if len(unknown) > 8 else ''}; expected 'features.<i>.weight/bias' (torchvision naming)"
        )
    expected = wanted.state_dict()
    missing = [f"features.{k}" for k in expected if k not in picked]
    if missing:
        raise KeyError(f"{path} lacks VGG16 keys {missing} needed up to the requested layer")
    for key, ref in expected.items():
        if tuple(picked[key].shape) != tuple(ref.shape):
            raise ValueError(
                f"{path}: features.{key} has shape {tuple(picked[key].shape)}, VGG16 expects {tuple(ref.shape)}"
            )
    return {key: picked[key] for key in expected}


class VGGPerceptualLoss(nn.Module):
    """Mean over ``layers`` of the L1 distance between frozen VGG16 features of ``pred`` and ``target``.

    Inputs are [0, 1] RGB images ``(..., 3, H, W)`` (e.g. ``(B, T, 3, H, W)``: frames are flattened into the batch),
    normalised with ImageNet mean/std for every weights file (see the module docstring).
    """

    def __init__(self, weights_path: Union[str, Path], layers: Layers = "relu3_3") -> None:
        super().__init__()
        path = Path(weights_path)
        self.layers = (layers,) if isinstance(layers, str) else tuple(layers)
        self._indices = [VGG16_LAYERS[layer] for layer in self.layers]
        self.features = _vgg16_features(max(self._indices))
        self.features.load_state_dict(_features_state(_read_state_dict(path), path, self.features))
        self.features.requires_grad_(False)
        self.features.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        # A frozen feature extractor stays in eval mode whatever mode its owner is switched to.
        super().train(mode)
        self.features.eval()
        return self

    def _extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The features at each of ``self.layers``, in that order."""
        if x.dim() < 4 or x.shape[-3] != 3:
            raise ValueError(f"VGGPerceptualLoss expects (..., 3, H, W) RGB images, got shape {tuple(x.shape)}")
        # Match the weights' dtype: a fp16/bf16 engine hands over half-precision outputs.
        h = (x.reshape(-1, *x.shape[-3:]).to(self.mean.dtype) - self.mean) / self.std
        taken = {}
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self._indices:
                taken[index] = h
        return [taken[index] for index in self._indices]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        # The target's features need no graph: it is ground truth, so its values (and the loss) are the same.
        with torch.no_grad():
            target_features = self._extract(target)
        distances = [F.l1_loss(p, t) for p, t in zip(self._extract(pred), target_features)]
        return sum(distances) / len(distances)


class DeblurLoss(nn.Module):
    """``charbonnier_weight * charbonnier(pred, target) + vgg_weight * perceptual(pred, target)``.

    ``forward`` returns ``(total, parts)``; ``parts`` holds detached scalars for logging: ``loss_charbonnier`` and,
    when the perceptual term is on (``vgg_weight > 0``), ``loss_perceptual`` (unweighted). The perceptual term's
    file is ``vgg_path``, or when that is None the hub cache's (``find_vgg16_weights``); ``say`` gets the line
    naming it. Value limits are the config schema's (LOSS.*), not checked again here.
    """

    def __init__(
        self,
        delta: float = 1e-3,
        vgg_weight: float = 0.0,
        vgg_layers: Layers = "relu3_3",
        vgg_path: Optional[Union[str, Path]] = None,
        charbonnier_weight: float = 1.0,
        say: Optional[Say] = None,
    ) -> None:
        super().__init__()
        self.delta = float(delta)
        self.charbonnier_weight = float(charbonnier_weight)
        self.vgg_weight = float(vgg_weight)
        self.perceptual = None
        if vgg_weight > 0:
            path, note = find_vgg16_weights(vgg_path)
            self.perceptual = VGGPerceptualLoss(path, vgg_layers)
            if say is not None:
                say(note)

    @classmethod
    def from_config(cls, cfg: Any, say: Optional[Say] = None) -> "DeblurLoss":
        """Build from a config read by attribute (``cfg.LOSS.*``)."""
        loss = cfg.LOSS
        return cls(
            delta=loss.CHARBONNIER.DELTA,
            charbonnier_weight=loss.CHARBONNIER.WEIGHT,
            vgg_weight=loss.VGG_PERCEPTUAL.WEIGHT,
            vgg_layers=loss.VGG_PERCEPTUAL.LAYERS,
            vgg_path=loss.VGG_PATH,
            say=say,
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        charb = charbonnier_loss(pred, target, self.delta)
        parts = {"loss_charbonnier": charb.detach()}
        total = self.charbonnier_weight * charb  # x 1.0 (the default) is exact
        if self.perceptual is None:
            return total, parts
        perceptual = self.perceptual(pred, target)
        parts["loss_perceptual"] = perceptual.detach()
        return total + self.vgg_weight * perceptual, parts


class FusionLoss:
    """S-VRT's losses on the fused frames ``fused`` (B,T,3,H,W, one per input frame) of its early fusion, each a
    Charbonnier with ``delta``:

    - phase 1 (the fusion module alone): ``phase1_weight x C(fused, sharp) + w(step) x C(fused, blurry)
      + update_penalty x mean|fused - blurry|``, the pass-through weight ``w`` moving linearly from
      ``passthrough_start`` towards ``passthrough_end``: ``start + (end - start) x min(n, F) / F`` at step n of
      ``F = phase1_steps`` (S-VRT's schedule: its phase 1 is its iterations 1 to fix_iter - 1 = F);
    - phase 2: ``phase2_weight x C(fused, sharp)``, added to the output's loss.

    Each returns ``(total, parts)`` with the unweighted terms as ``loss_fusion``, ``loss_passthrough`` and
    ``loss_update`` (detached; a term whose weight is 0 is neither computed nor reported, as S-VRT skips it).
    """

    def __init__(self, delta: float, phase1_steps: int, phase1_weight: float = 0.0, passthrough_start: float = 0.0,
                 passthrough_end: float = 0.0, update_penalty: float = 0.0, phase2_weight: float = 0.0) -> None:
        self.delta, self.phase1_steps = delta, phase1_steps
        self.phase1_weight, self.phase2_weight, self.update_penalty = phase1_weight, phase2_weight, update_penalty
        self.passthrough = (passthrough_start, passthrough_end)

    @classmethod
    def from_config(cls, cfg: Any) -> "FusionLoss":
        fusion = cfg.LOSS.FUSION
        return cls(cfg.LOSS.CHARBONNIER.DELTA, cfg.TRAIN.FIX_ITER, fusion.PHASE1_WEIGHT, fusion.PASSTHROUGH_START,
                   fusion.PASSTHROUGH_END, fusion.UPDATE_PENALTY, fusion.PHASE2_WEIGHT)

    def passthrough_weight(self, step: int) -> float:
        """The pass-through weight of optimizer step number ``step`` (1-based, as S-VRT counts)."""
        start, end = self.passthrough
        if self.phase1_steps < 1:
            return end
        return start + (end - start) * min(max(step, 0), self.phase1_steps) / self.phase1_steps

    def phase1(self, fused: torch.Tensor, sharp: torch.Tensor, blurry: torch.Tensor,
               step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = [(self.phase1_weight, "loss_fusion", lambda: charbonnier_loss(fused, sharp, self.delta)),
                 (self.passthrough_weight(step), "loss_passthrough", lambda: charbonnier_loss(fused, blurry, self.delta)),
                 (self.update_penalty, "loss_update", lambda: (fused.float() - blurry.float()).abs().mean())]
        return _weighted(fused, terms)

    def phase2(self, fused: torch.Tensor, sharp: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return _weighted(fused, [(self.phase2_weight, "loss_fusion", lambda: charbonnier_loss(fused, sharp,
                                                                                               self.delta))])


def _weighted(like: torch.Tensor, terms: Sequence[tuple[float, str, Callable[[], torch.Tensor]]]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    total, parts = like.new_zeros((), dtype=torch.float32), {}
    for weight, name, term in terms:
        if weight > 0:
            value = term()
            parts[name] = value.detach()
            total = total + weight * value
    return total, parts
