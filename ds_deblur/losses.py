"""Training losses: Charbonnier on pixels plus an optional VGG16 perceptual term.

Semantics follow the original spike-deblur trainer:
- Charbonnier: ``mean(sqrt((pred - target)^2 + delta^2))`` with ``delta = 1e-3``. The constant inside the square
  root is ``delta**2`` (1e-6), not ``delta`` itself; BasicSR's ``CharbonnierLoss(eps=1e-12)`` puts ``eps`` inside
  unsquared, so BasicSR's eps=1e-12 corresponds to delta=1e-6 here.
- Perceptual: L1 distance between VGG16 features at one ReLU layer (``relu3_3`` by default) of ImageNet-normalised
  [0, 1] images; total loss = LOSS.CHARBONNIER.WEIGHT * charbonnier + LOSS.VGG_PERCEPTUAL.WEIGHT * perceptual.

VGG16 is built here (no torchvision) with torchvision's parameter names, so torchvision's ImageNet file
``vgg16-397923af.pth`` loads directly. Weights are never downloaded: the user points LOSS.VGG_PATH at a local file;
when it is null, the file torchvision (and so the original trainer) downloaded into torch's hub cache is used if
it is there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ds_deblur.errors import WeightsNotFoundError

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_FILE = VGG16_URL.rsplit("/", 1)[1]

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
    return (
        f"VGG16 weights {problem}: {path}. Weights are never downloaded at run time. Download torchvision's "
        f"ImageNet VGG16 file ({VGG16_URL}) or save `torchvision.models.vgg16(weights='IMAGENET1K_V1')"
        f".state_dict()`, then set LOSS.VGG_PATH to the local file (or LOSS.VGG_WEIGHT: 0 to train without the "
        f"perceptual term)."
    )


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
    """L1 distance between frozen VGG16 features of ``pred`` and ``target`` at one ReLU layer.

    Inputs are [0, 1] RGB images ``(..., 3, H, W)`` (e.g. ``(B, T, 3, H, W)``: frames are flattened into the batch);
    they are normalised with ImageNet mean/std, which is what torchvision's IMAGENET1K_V1 weights expect.
    """

    def __init__(self, weights_path: str | Path, layer: str = "relu3_3") -> None:
        super().__init__()
        if layer not in VGG16_LAYERS:
            raise ValueError(f"Unknown VGG layer {layer!r} (LOSS.VGG_PERCEPTUAL.LAYERS, LOSS.VGG_LAYER); choose one "
                             f"of {list(VGG16_LAYERS)}")
        path = Path(weights_path)
        self.layer = layer
        self.features = _vgg16_features(VGG16_LAYERS[layer])
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

    def _extract(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4 or x.shape[-3] != 3:
            raise ValueError(f"VGGPerceptualLoss expects (..., 3, H, W) RGB images, got shape {tuple(x.shape)}")
        # Match the weights' dtype: a fp16/bf16 engine hands over half-precision outputs.
        x = x.reshape(-1, *x.shape[-3:]).to(self.mean.dtype)
        return self.features((x - self.mean) / self.std)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        with torch.no_grad():
            target_features = self._extract(target)
        return F.l1_loss(self._extract(pred), target_features)


class DeblurLoss(nn.Module):
    """``charbonnier_weight * charbonnier(pred, target) + vgg_weight * perceptual(pred, target)``.

    ``forward`` returns ``(total, parts)``; ``parts`` holds detached scalars for logging: ``loss_charbonnier`` and,
    when the perceptual term is on (``vgg_weight > 0``), ``loss_perceptual`` (unweighted).
    """

    def __init__(
        self,
        delta: float = 1e-3,
        vgg_weight: float = 0.0,
        vgg_layer: str = "relu3_3",
        vgg_path: str | Path | None = None,
        charbonnier_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if delta <= 0:
            raise ValueError(f"LOSS.CHARBONNIER.DELTA (LOSS.CHARBONNIER_DELTA) must be > 0 (got {delta}); it keeps "
                             f"the gradient finite at 0")
        if vgg_weight < 0:
            raise ValueError(f"LOSS.VGG_PERCEPTUAL.WEIGHT (LOSS.VGG_WEIGHT) must be >= 0 (got {vgg_weight})")
        if vgg_weight > 0 and vgg_path is None:
            raise ValueError(
                f"LOSS.VGG_PERCEPTUAL.WEIGHT (LOSS.VGG_WEIGHT) is {vgg_weight} but LOSS.VGG_PATH is not set and "
                f"{hub_vgg16_path()} does not exist. Weights are never downloaded: set LOSS.VGG_PATH to a local "
                f"VGG16 file (torchvision's {VGG16_FILE}, {VGG16_URL}) or set LOSS.VGG_PERCEPTUAL.WEIGHT: 0."
            )
        self.delta = float(delta)
        self.charbonnier_weight = float(charbonnier_weight)
        self.vgg_weight = float(vgg_weight)
        self.perceptual = VGGPerceptualLoss(vgg_path, vgg_layer) if vgg_weight > 0 else None

    @classmethod
    def from_config(cls, cfg: Any) -> "DeblurLoss":
        """Build from a config read by attribute (``cfg.LOSS.*``); a null LOSS.VGG_PATH is torchvision's file in
        torch's hub cache when it is there."""
        loss = cfg.LOSS
        cached = hub_vgg16_path()
        return cls(
            delta=loss.CHARBONNIER.DELTA,
            charbonnier_weight=loss.CHARBONNIER.WEIGHT,
            vgg_weight=loss.VGG_PERCEPTUAL.WEIGHT,
            vgg_layer=loss.VGG_PERCEPTUAL.LAYERS[0],
            vgg_path=loss.VGG_PATH if loss.VGG_PATH is not None or not cached.is_file() else cached,
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


def hub_vgg16_path() -> Path:
    """Where torchvision's ``vgg16(pretrained=True)`` (the original trainer) keeps the VGG16 file it downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
