"""Resuming a sharded tag on another world size, through DeepSpeed's universal checkpoint.

A tag's ZeRO shards only fit the world size that wrote them. For another one, rank 0 converts the tag once with
DeepSpeed's ``ds_to_universal`` into a cache beside it, ``CKPT_DIR/TAG.universal/TAG``, and every rank loads that
with ``checkpoint.load_universal`` set in the DeepSpeed config. The cache is built under a temporary name and
renamed when complete; it records the tag's commit marker, so a tag saved again (``best``) gets a fresh cache.
Retention removes a tag's cache with the tag. DeepSpeed's universal load skips module buffers: we copy them
from the tag's own model-state file afterwards.
"""
from __future__ import annotations

import shutil
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from deepspeed.checkpoint import ds_to_universal

from ds_deblur import distributed
from ds_deblur.ckpt.tags import commit_fingerprint
from ds_deblur.errors import UniversalError

SUFFIX = ".universal"
SOURCE = "SOURCE_COMMIT.json"  # the source tag's commit marker, copied when the cache is complete


def cache_of(tag_dir: Path) -> Path:
    """The directory DeepSpeed loads the universal copy of ``tag_dir`` from (the copy is its subdir TAG)."""
    return tag_dir.with_name(tag_dir.name + SUFFIX)


def is_current(tag_dir: Path) -> bool:
    marker = cache_of(tag_dir) / SOURCE
    return marker.is_file() and marker.read_text() == commit_fingerprint(tag_dir)


def prepare(tag_dir: Path) -> Path:
    """Make sure the universal cache of a complete tag exists (rank 0 converts, every rank waits); returns it.

    Every rank calls this. A failed conversion raises on every rank rather than leaving the others waiting."""
    error = None
    if distributed.is_main() and not is_current(tag_dir):
        try:
            convert(tag_dir)
        except Exception as exc:  # reported on every rank below, with the cause chained on rank 0
            error = exc
    if distributed.any_rank(error is not None):
        raise UniversalError(f"Converting {tag_dir} to DeepSpeed's universal format (to resume it on another "
                             f"world size) failed: {error or 'see rank 0'}. Resume from its single file "
                             f"(last.pth, or ds-deblur convert {tag_dir}) instead") from error
    return cache_of(tag_dir)


def convert(tag_dir: Path) -> Path:
    """Build ``cache_of(tag_dir)`` from scratch, atomically (a crash leaves at most a ``.partial`` directory)."""
    cache = cache_of(tag_dir)
    partial = cache.with_name(cache.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"[train] Converting {tag_dir} to DeepSpeed's universal checkpoint in {cache} (once)", flush=True)
    # One worker each: in-process, so a rank of a running job spawns no process pool and holds no extra copies.
    ds_to_universal.main(Namespace(input_folder=str(tag_dir), output_folder=str(partial / tag_dir.name),
                                   num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                   strict=True, inject_missing_state=True))
    (partial / SOURCE).write_text(commit_fingerprint(tag_dir))
    shutil.rmtree(cache, ignore_errors=True)
    partial.rename(cache)
    return cache


def remove(tag_dir: Path) -> None:
    for path in (cache_of(tag_dir), cache_of(tag_dir).with_name(cache_of(tag_dir).name + ".partial")):
        shutil.rmtree(path, ignore_errors=True)


def restore_buffers(engine: Any, tag_dir: Path) -> list[str]:
    """Copy the module buffers saved in ``tag_dir`` into the engine's module; returns their names."""
    files = sorted(tag_dir.glob("*mp_rank_00_model_states.pt"))
    saved = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    names = []
    for name, buffer in engine.module.named_buffers():
        if name in saved:
            buffer.data.copy_(saved[name].to(buffer.dtype))
            names.append(name)
    return names
