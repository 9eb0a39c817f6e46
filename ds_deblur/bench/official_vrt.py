"""Our VRT against the official one (JingyunLiang/VRT ``models/network_vrt.py``, read from a path the user gives):
the ``vrt_gopro`` preset with the same weights on the same clip, float32, forward + backward of ``|out|.mean()``,
after one untimed step each, the two models taking turns for ``rounds`` rounds at each thread count; reported: each
one's fastest round and official / ours (above 1: ours is faster). The official deformable convolution calls ``torchvision.ops.
deform_conv2d``; here it gets ours (the same grid_sample columns), so the comparison is of everything else.
"""
from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch

from ds_deblur.models.deform_conv import deform_conv2d
from ds_deblur.models.presets import PRESETS
from ds_deblur.models.vrt import VRT

BUILD_OPTIONS = ("spike_res_blocks", "identity_init")


def load_official(path: Path) -> types.ModuleType:
    """The official ``network_vrt.py`` as a module, its ``torchvision.ops.deform_conv2d`` ours."""
    if not path.is_file():
        raise ValueError(f"--reference {path}: no such file (the official models/network_vrt.py of JingyunLiang/VRT)")
    stand_in = types.ModuleType("torchvision")
    stand_in.ops = types.SimpleNamespace(deform_conv2d=deform_conv2d)  # type: ignore[attr-defined]
    saved = sys.modules.get("torchvision")
    sys.modules["torchvision"] = stand_in  # its import line needs none of torchvision (not installed here)
    try:
        spec = importlib.util.spec_from_file_location("official_network_vrt", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as err:  # whatever a user's file raises, said as a bench error
        raise ValueError(f"--reference {path}: running it failed ({type(err).__name__}: {err}); the official file "
                         f"needs einops (in requirements.txt)") from err
    finally:
        if saved is None:
            sys.modules.pop("torchvision")
        else:
            sys.modules["torchvision"] = saved
    if not hasattr(module, "VRT"):
        raise ValueError(f"--reference {path} defines no VRT class: is it VRT's models/network_vrt.py?")
    module.torchvision = stand_in  # type: ignore[attr-defined]
    return module


def gopro_models(official: types.ModuleType, clip_len: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, official) in the vrt_gopro configuration, no stochastic depth, the official one with our weights."""
    kwargs = {k: v for k, v in PRESETS["vrt_gopro"](clip_len, 192).items() if k not in BUILD_OPTIONS}
    kwargs.update(upscale=1, drop_path_rate=0.0)
    torch.manual_seed(0)
    ours, theirs = VRT(**kwargs), official.VRT(**kwargs)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def compare(path: Path, shape: tuple[int, int, int], threads: list[int], rounds: int) -> dict:
    """Max abs difference of the two forwards, and the fwd+bwd times per thread count."""
    t, h, w = shape
    ours, theirs = gopro_models(load_official(path), t)
    clip = torch.rand(1, t, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(clip) - theirs(clip)).abs().max().item()
    print(f"[bench model] official vs ours, same weights: max abs difference {diff:.2e}", flush=True)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        times: dict[str, list[float]] = {"official": [], "ours": []}
        for model in (theirs, ours):
            _train_step(model, clip)  # warm-up, untimed: first-use costs (allocator, kernels) are not the code's
        for r in range(rounds):
            order = [("official", theirs), ("ours", ours)]
            for name, model in order if r % 2 == 0 else order[::-1]:
                times[name].append(_seconds(lambda: _train_step(model, clip)))
                print(f"[bench model] {n} thread(s), round {r}, {name}: {times[name][-1]:.2f} s", flush=True)
        best = {name: min(values) for name, values in times.items()}
        rows.append({"threads": n, "official_s": round(best["official"], 3), "ours_s": round(best["ours"], 3),
                     "official_over_ours": round(best["official"] / best["ours"], 3), "times_s": times})
    return {"shape_BTCHW": [1, t, 3, h, w], "max_abs_difference": diff, "rounds": rounds, "rows": rows}


def _train_step(model: torch.nn.Module, clip: torch.Tensor) -> None:
    model(clip).abs().mean().backward()
    model.zero_grad(set_to_none=True)


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
