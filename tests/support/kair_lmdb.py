"""KAIR LMDBs for the tests, written the way KAIR's ``scripts/data_preparation/create_lmdb.py`` writes them
(``utils/utils_lmdb.py`` ``make_lmdb_from_imgs``): every PNG under a folder, in sorted order, stored under its
relative path without ``.png`` (``CLIP/NNNNNN``) as PNG bytes re-encoded at compression level 1, and a
``meta_info.txt`` line ``CLIP/NNNNNN.png (H,W,C) 1`` per frame. KAIR encodes with OpenCV; the pixels, not the bytes,
are what a reader sees, so PIL's encoder stands in for it here."""
from __future__ import annotations

import io
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image

COMPRESS_LEVEL = 1  # KAIR's default


def write_kair_lmdb(folder: Path, db: Path) -> list[str]:
    """The LMDB ``db`` (a new ``NAME.lmdb`` folder) of every PNG under ``folder``; returns the keys written."""
    assert db.name.endswith(".lmdb") and not db.exists(), db
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    frames = [(path[:-len(".png")], _encoded(folder / path)) for path in paths]
    env = lmdb.open(str(db), map_size=10 * sum(len(data) for _, (data, _) in frames) + (1 << 20))
    with env.begin(write=True) as txn, open(db / "meta_info.txt", "w") as meta:
        for key, (data, (h, w, c)) in frames:
            txn.put(key.encode("ascii"), data)
            meta.write(f"{key}.png ({h},{w},{c}) {COMPRESS_LEVEL}\n")
    env.close()
    return [key for key, _ in frames]


def _encoded(path: Path) -> tuple[bytes, tuple[int, int, int]]:
    pixels = np.asarray(Image.open(path))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=COMPRESS_LEVEL)
    height, width = pixels.shape[:2]
    return buffer.getvalue(), (height, width, 1 if pixels.ndim == 2 else pixels.shape[2])
