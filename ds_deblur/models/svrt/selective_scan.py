"""The Mamba block (selective state-space model) that S-VRT's mamba fusion operators stack, without a CUDA package.

``Mamba`` has the parameters of ``mamba_ssm.Mamba`` (v1, ``mamba_simple``) under the same names, shapes, state-dict
order and initialisation, so S-VRT checkpoints trained with ``mamba_ssm`` load into it with ``strict=True``.
Its scan (``selective_scan``) is plain PyTorch: a loop over the sequence in float32, fine for the short sequences
of the fusion operators (spike bins or frames). On CUDA with ``mamba_ssm`` installed the scan runs its kernel.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

# mamba_ssm's defaults for the time-step projection; S-VRT never overrides them.
_DT_MIN = 1e-3
_DT_MAX = 0.1
_DT_FLOOR = 1e-4


@functools.lru_cache(maxsize=None)
def _cuda_scan_kernel() -> Optional[Callable[..., torch.Tensor]]:
    """mamba_ssm's fused scan, or None where it is not installed."""
    try:
        # Imported here, not at the top: mamba_ssm is an optional CUDA-only package that CPU installs lack.
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor], z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = True) -> torch.Tensor:
    """The selective scan of mamba_ssm's ``selective_scan_fn``, returned in ``u``'s dtype.

    Shapes: u, delta, z (b, d, l); A (d, n); B, C (b, n, l); D, delta_bias (d). With ``dt = softplus(delta +
    delta_bias)`` (softplus only if ``delta_softplus``) the state ``h`` (b, d, n) starts at zero and
    ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t``, ``y_t = C_t . h_t + D * u_t``, then ``y * silu(z)``.
    """
    kernel = _cuda_scan_kernel() if u.is_cuda else None
    if kernel is not None:
        return kernel(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return _scan_loop(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _scan_loop(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
               delta_softplus: bool) -> torch.Tensor:
    out_dtype = u.dtype
    # Float32 throughout like the CUDA kernel; only elementwise ops and sums, so an active autocast changes nothing.
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    drive = delta * u
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    # One step at a time keeps the transient memory at one (b, d, n) state instead of (b, d, l, n).
    for t in range(u.shape[-1]):
        state = torch.exp(delta[:, :, t, None] * A) * state + drive[:, :, t, None] * B[:, None, :, t]
        outputs.append((state * C[:, None, :, t]).sum(dim=-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


class Mamba(nn.Module):
    """One Mamba layer on token sequences: ``(N, L, d_model) -> (N, L, d_model)``, causal along L.

    ``d_inner = expand * d_model`` channels go through a causal depthwise convolution (kernel ``d_conv``), a
    selective scan with ``d_state`` states per channel gated by ``silu(z)``, and back to ``d_model``.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        # S4D-real initialisation: state k of every channel decays at rate k.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self._init_time_step()

    def _init_time_step(self) -> None:
        # Time steps start log-uniform in [_DT_MIN, _DT_MAX]: the bias is their inverse softplus, so that
        # softplus(bias) gives them back at the start of training.
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        d_inner = self.dt_proj.out_features
        log_dt = torch.rand(d_inner) * (math.log(_DT_MAX) - math.log(_DT_MIN)) + math.log(_DT_MIN)
        dt = torch.exp(log_dt).clamp(min=_DT_FLOOR)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x, z = self.in_proj(tokens).transpose(1, 2).chunk(2, dim=1)
        # Padding d_conv - 1 on both sides; keeping the first L outputs makes the convolution causal.
        x = F.silu(self.conv1d(x)[..., :length])
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # dt_proj's bias goes into the scan (delta_bias), before the softplus, as in mamba_ssm.
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y = selective_scan(x, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
                           self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))
