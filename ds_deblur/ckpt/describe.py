"""What a checkpoint holds (``ds-deblur inspect``): a checkpoint directory, one DeepSpeed tag, or a single
file, as a JSON-ready dict (``describe``) and as text (``format_text``).

Single files (``last.pth``, ``best.pth``, weights exports) are read with ``weights_only=True``. Tag files are
DeepSpeed pickles and are unpickled in full (see ``ds_deblur.ckpt.gather``): inspect only your own runs' tags.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from ds_deblur.ckpt.gather import frozen_names, has_ema, load_pickled, loss_scaler_values, open_tag
from ds_deblur.ckpt.single_file import from_original, is_original, is_single_file, read_weights_only
from ds_deblur.ckpt.tags import COMMIT, LATEST, list_tags, read_commit, read_latest, resolve, tag_problem
from ds_deblur.errors import CheckpointFormatError

# JSON key, text label, file pattern
_FILE_KINDS = (("model_states", "model states", "*model_states.pt"),
               ("optimizer_states", "optimizer states", "*optim_states.pt"),
               ("rng", "rng", "rng_rank*.pt"), ("ema", "EMA weights", "ema_rank*.pt"),
               ("commit", "commit marker", COMMIT))


def describe(path: Path) -> dict:
    """A JSON-ready description of a checkpoint directory, a tag directory or a single file."""
    location = resolve(path, complete=False)
    return {"file": describe_file, "tag": describe_tag, "dir": describe_dir}[location.kind](location.path)


def describe_dir(path: Path) -> dict:
    latest = read_latest(path)
    tags = []
    for tag_dir in list_tags(path):
        problem = tag_problem(tag_dir)
        tags.append({"name": tag_dir.name, "complete": problem is None, "problem": problem,
                     "step": _commit_step(tag_dir), "bytes": _dir_bytes(tag_dir)})
    singles = [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(path.glob("*.pth")) if p.is_file()]
    if not tags and not singles and latest is None:
        raise CheckpointFormatError(f"{path} holds no DeepSpeed tags, '{LATEST}' file or .pth files: it is not a "
                                    f"checkpoint directory (the trainer writes them to LOG.SAVE_DIR/ckpts)")
    latest_dir = path / latest if latest else None
    return {"kind": "dir", "path": str(path), "latest": latest, "tags": tags, "single_files": singles,
            "latest_tag": describe_tag(latest_dir) if latest_dir is not None and latest_dir.is_dir() else None}


def _commit_step(tag_dir: Path) -> Optional[int]:
    step = (read_commit(tag_dir) or {}).get("step")
    return int(step) if isinstance(step, (int, float)) else None


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def describe_tag(tag_dir: Path) -> dict:
    problem = tag_problem(tag_dir)
    files = {p.name: p.stat().st_size for p in sorted(tag_dir.iterdir()) if p.is_file()}
    info: dict[str, Any] = {"kind": "tag", "path": str(tag_dir), "name": tag_dir.name, "complete": problem is None,
                            "problem": problem, "files": files, "bytes": sum(files.values()),
                            "contains": {key: sorted(p.name for p in tag_dir.glob(pattern))
                                         for key, _, pattern in _FILE_KINDS}}
    try:
        tag = open_tag(tag_dir)
    except CheckpointFormatError as err:
        info["error"] = str(err)
        return info
    state = tag.state
    info.update({key: state.get(key) for key in ("step", "epoch", "best_psnr", "best_step", "data", "versions")})
    info.update(world_size=tag.world_size, zero_stage=tag.stage, precision=tag.precision)
    scheduler = tag.header.get("lr_scheduler")
    info["contains"]["scheduler"] = None if scheduler is None else {
        "last_epoch": scheduler.get("last_epoch"), "lr": scheduler.get("_last_lr")}
    info["contains"]["scaler"] = _tag_scaler(tag.optim_files[0]) if tag.precision == "fp16" else None
    info["ema_decay"] = (tag.state.get("config") or {}).get("TRAIN", {}).get("EMA_DECAY") if has_ema(tag) else None
    info["frozen"] = len(frozen_names(tag))
    return info


def _tag_scaler(optim_file: Path) -> Optional[dict]:
    return loss_scaler_values(load_pickled(optim_file)["optimizer_state_dict"].get("loss_scaler"))


def describe_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return _describe_safetensors(path)
    ckpt = read_weights_only(path, mmap=True)
    if is_original(ckpt):
        return _describe_single_file(path, from_original(ckpt, path))
    if is_single_file(ckpt):
        return _describe_single_file(path, ckpt)
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        return {"kind": "weights", "path": str(path), "bytes": path.stat().st_size, "state_dict": _tensors(ckpt)}
    raise CheckpointFormatError(f"{path} is neither a ds_deblur single-file checkpoint nor a weights export "
                                f"(a dict of tensors)")


def _describe_single_file(path: Path, ckpt: dict) -> dict:
    meta, optimizer = ckpt["meta"], ckpt["optimizer"]
    info = {"kind": "single_file", "path": str(path), "bytes": path.stat().st_size,
            **{key: ckpt[key] for key in ("step", "epoch", "best_psnr")},
            **{key: meta.get(key) for key in ("best_step", "world_size", "zero_stage", "precision", "source_tag",
                                              "source_dir", "format", "versions", "data")}}
    info["contains"] = {
        "state_dict": _tensors(ckpt["state_dict"]),
        "optimizer": None if optimizer is None else {
            "states": len(optimizer["state"]), "lr": optimizer["param_groups"][0].get("lr"),
            "moments": _tensors({f"{i}.{k}": v for i, s in optimizer["state"].items()
                                 for k, v in s.items() if k != "step"})},
        "scheduler": None if ckpt["scheduler"] is None else {"last_epoch": ckpt["scheduler"].get("last_epoch"),
                                                             "lr": ckpt["scheduler"].get("_last_lr")},
        "scaler": ckpt["scaler"], "config": ckpt["config"] is not None,
        "state_dict_ema": _tensors(ckpt["state_dict_ema"]) if "state_dict_ema" in ckpt else None}
    info["ema_decay"] = meta.get("ema_decay")
    return info


def _tensors(tensors: dict) -> dict:
    return {"count": len(tensors), "numel": sum(t.numel() for t in tensors.values()),
            "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}


def _describe_safetensors(path: Path) -> dict:
    # The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range), data.
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if length > path.stat().st_size:
                raise ValueError(f"header length {length} exceeds the file")
            header = json.loads(handle.read(length))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        numel = sum(torch.Size(v["shape"]).numel() for v in entries.values())
        nbytes = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in entries.values())
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointFormatError(f"{path} is not a readable safetensors file ({err})") from None
    return {"kind": "weights", "path": str(path), "bytes": path.stat().st_size,
            "state_dict": {"count": len(entries), "numel": numel, "bytes": nbytes},
            "metadata": header.get("__metadata__", {})}


# ---------------------------------------------------------------------------------------------- text output
def format_text(info: dict) -> str:
    return "\n".join({"dir": _dir_lines, "tag": _tag_lines, "single_file": _single_file_lines,
                      "weights": _weights_lines}[info["kind"]](info))


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _progress(info: dict) -> str:
    psnr = info.get("best_psnr")
    best = f"{psnr:.4f}" if isinstance(psnr, (int, float)) else "?"
    return f"step {info.get('step')}  epoch {info.get('epoch')}  best PSNR {best} (step {info.get('best_step')})"


def _run_shape(info: dict) -> str:
    return f"world size {info.get('world_size')}  ZeRO stage {info.get('zero_stage')}  " \
           f"precision {info.get('precision')}"


def _dir_lines(info: dict) -> list[str]:
    lines = [f"Checkpoint directory {info['path']}", f"  latest -> {info['latest'] or '(no latest file)'}", "  tags:"]
    for tag in info["tags"]:
        status = "complete" if tag["complete"] else f"INCOMPLETE: {tag['problem']}"
        step = f"step {tag['step']}" if tag["step"] is not None else ""
        lines.append(f"    {tag['name']:<20} {step:<12} {_size(tag['bytes']):>10}  {status}")
    if not info["tags"]:
        lines.append("    (none)")
    if info["single_files"]:
        lines.append("  single files: " + ", ".join(f"{f['name']} ({_size(f['bytes'])})" for f in info["single_files"]))
    if info["latest_tag"] is not None:
        lines += [""] + _tag_lines(info["latest_tag"])
    return lines


def _tag_lines(info: dict) -> list[str]:
    status = "complete" if info["complete"] else f"INCOMPLETE: {info['problem']}"
    lines = [f"Tag {info['name']} ({info['path']}): {status}"]
    if "error" in info:
        return lines + [f"  cannot read: {info['error']}"]
    lines += [f"  {_progress(info)}", f"  {_run_shape(info)}"]
    if info.get("versions"):
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    contains, files = info["contains"], info["files"]
    lines.append("  contains:")
    for key, label, _ in _FILE_KINDS:
        names = contains[key]
        total = sum(files[name] for name in names)
        lines.append(f"    {label:<17} {len(names)} file(s) {_size(total):>10}  {', '.join(names) or '-'}")
    scheduler, scaler = contains.get("scheduler"), contains.get("scaler")
    lines.append(f"    {'scheduler':<17} " + ("-" if scheduler is None else
                                               f"at step {scheduler['last_epoch']}, lr {scheduler['lr']}"))
    lines.append(f"    {'loss scaler':<17} " + ("-" if scaler is None else
                                                 f"scale {scaler.get('cur_scale')} (fp16 dynamic loss scaling)"))
    lines.append(f"  EMA weights: {_ema_text(info)}")
    if info.get("frozen"):
        lines.append(f"  frozen parameters: {info['frozen']} (TRAIN.FREEZE)")
    lines.append(f"  total {_size(info['bytes'])}")
    return lines


def _ema_text(info: dict) -> str:
    return "no (TRAIN.EMA_DECAY 0)" if info.get("ema_decay") is None else f"yes, decay {info['ema_decay']}"


def _single_file_lines(info: dict) -> list[str]:
    contains = info["contains"]
    weights, optimizer = contains["state_dict"], contains["optimizer"]
    origin = "written by the original S-VRT trainer" if info.get("format") == "original" else \
        f"from tag {info.get('source_tag')} of {info.get('source_dir')}: {_run_shape(info)}"
    lines = [f"Single-file checkpoint {info['path']} ({_size(info['bytes'])}, format {info.get('format')})",
             f"  {_progress(info)}", f"  {origin}", "  contains:",
             f"    state_dict        {weights['count']} tensors, {weights['numel']:,} values, "
             f"{_size(weights['bytes'])} (fp32)"]
    lines.append("    optimizer         " + ("-" if optimizer is None else
                                          f"AdamW, state for {optimizer['states']} parameters "
                                          f"({_size(optimizer['moments']['bytes'])} of moments), lr {optimizer['lr']}"))
    scheduler, scaler = contains["scheduler"], contains["scaler"]
    lines.append("    scheduler         " + ("-" if scheduler is None else
                                          f"at step {scheduler['last_epoch']}, lr {scheduler['lr']}"))
    lines.append("    scaler            " + ("-" if scaler is None else f"GradScaler, scale {scaler['scale']}"))
    lines.append("    config            " + ("yes" if contains["config"] else "-"))
    ema = contains["state_dict_ema"]
    lines.append("    state_dict_ema    " + ("- (no EMA weights)" if ema is None else
                                          f"{ema['count']} tensors, {_size(ema['bytes'])} (fp32 EMA weights, decay "
                                          f"{info.get('ema_decay')})"))
    return lines


def _weights_lines(info: dict) -> list[str]:
    weights = info["state_dict"]
    return [f"Weights export {info['path']} ({_size(info['bytes'])})",
            f"  state_dict        {weights['count']} tensors, {weights['numel']:,} values, "
            f"{_size(weights['bytes'])}", "  no optimizer, scheduler or training progress (use it with --init-weights)"]
