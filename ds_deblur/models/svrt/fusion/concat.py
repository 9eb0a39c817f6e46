"""S-VRT's ``concat`` fusion operator: a 1x1 convolution over the channel concatenation of RGB and spike.

The module also holds what every S-VRT fusion operator here shares: the checked reader of
``netG.fusion.operator_params`` and the frame-by-frame application of a 4-D fusion to 5-D inputs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from ds_deblur.errors import ConfigError

PARAMS_KEY = "netG.fusion.operator_params"

# (what a value must be, completing "KEY must be a number ...", the test of the value)
Rule = tuple[str, Callable[[float], bool]]
# A NaN or infinite initial value would only show up later as a NaN loss.
FINITE: Rule = ("that is finite", math.isfinite)


class OperatorParams:
    """Typed reads of one operator's ``operator_params``.

    S-VRT ignores keys its operator does not read, so a typo silently trains the default; here an unknown key
    fails at construction. Reads take several names where S-VRT accepts aliases: the first one present wins.
    """

    def __init__(self, params: Mapping[str, Any], operator: str, known: Iterable[str]) -> None:
        known = sorted(known)
        unknown = sorted(str(name) for name in params if name not in known)
        if unknown:
            raise ConfigError(f"{PARAMS_KEY}.{unknown[0]} is not an option of the {operator} fusion operator; "
                              f"known options: {', '.join(known) or 'none'}")
        self.params = params

    def _lookup(self, names: tuple[str, ...], default: Any) -> tuple[str, Any]:
        for name in names:
            if name in self.params:
                return name, self.params[name]
        return names[0], default

    def integer(self, *names: str, default: int, minimum: int = 1) -> int:
        name, value = self._lookup(names, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ConfigError(f"{PARAMS_KEY}.{name} must be {kind}, got {value!r}")
        return value

    def real(self, *names: str, default: float, rule: Optional[Rule] = None) -> float:
        name, value = self._lookup(names, default)
        text, test = rule or ("", lambda v: True)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
            raise ConfigError(f"{PARAMS_KEY}.{name} must be a number{' ' + text if text else ''}, got {value!r}")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        _, value = self._lookup((name,), default)
        # S-VRT's bool() would read the string "false" as True; only real booleans are accepted.
        if not isinstance(value, bool):
            raise ConfigError(f"{PARAMS_KEY}.{name} must be true or false, got {value!r}")
        return value


def fuse_frames(fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rgb: torch.Tensor, spike: torch.Tensor,
                rgb_chans: int, spike_chans: int) -> torch.Tensor:
    """Apply ``fuse``, a fusion of ``(N, C, H, W)`` maps, to 4-D inputs or to 5-D ``(B, T, C, H, W)`` ones (the
    early ``expanded`` and the middle placements) with every frame fused on its own."""
    if rgb.dim() != spike.dim() or rgb.dim() not in (4, 5):
        raise ValueError(f"rgb and spike must both be 4-D or both 5-D, got {tuple(rgb.shape)} and {tuple(spike.shape)}")
    lead = rgb.shape[:-3]
    if lead != spike.shape[:-3] or rgb.shape[-2:] != spike.shape[-2:]:
        raise ValueError(f"rgb {tuple(rgb.shape)} and spike {tuple(spike.shape)} must share batch, time and size")
    if (rgb.shape[-3], spike.shape[-3]) != (rgb_chans, spike_chans):
        raise ValueError(f"expected {rgb_chans} rgb and {spike_chans} spike channels, "
                         f"got {rgb.shape[-3]} and {spike.shape[-3]}")
    return fuse(rgb.flatten(0, -4), spike.flatten(0, -4)).unflatten(0, lead)


class ConcatFusion(nn.Module):
    """``proj(cat(rgb, spike))`` per frame; ``(..., rgb_chans, H, W)``, ``(..., spike_chans, H, W)`` ->
    ``(..., out_chans, H, W)`` for 4-D or 5-D inputs. Takes no options."""

    frame_contract = "expanded"

    def __init__(self, rgb_chans: int, spike_chans: int, out_chans: int, operator_params: Mapping[str, Any]) -> None:
        super().__init__()
        OperatorParams(operator_params, "concat", ())
        self.rgb_chans, self.spike_chans, self.out_chans = rgb_chans, spike_chans, out_chans
        self.proj = nn.Conv2d(rgb_chans + spike_chans, out_chans, kernel_size=1)

    def forward(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return fuse_frames(self._fuse, rgb, spike, self.rgb_chans, self.spike_chans)

    def _fuse(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([rgb, spike], dim=1))
