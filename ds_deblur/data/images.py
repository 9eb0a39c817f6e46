"""Reading frames: an RGB image, or just a window of it, as uint8, with errors that name the file (or the LMDB
and the key)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ds_deblur.errors import DatasetError

from .frame_store import FrameRef, open_frame
from .layout import file_kind

Window = tuple[int, int, int, int]  # top, left, height, width
GREY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma weights: the grey a spike sensor sees


def read_rgb(frame: FrameRef, size: tuple[int, int], window: Optional[Window] = None) -> np.ndarray:
    """The frame at ``frame`` (a file, or an LMDB frame; it must be ``size`` (H, W)), or its ``window``, as uint8
    (h, w, 3). Decoding a PNG is whole-frame work whatever the window; everything after it (mode conversion,
    copies) touches only the window."""
    try:
        with open_frame(frame) as img:
            img.load()
            if (img.height, img.width) != tuple(size):
                raise DatasetError(f"{frame} is {img.height}x{img.width}, expected {size[0]}x{size[1]} like the "
                                   f"rest of its sequence")
            if window is not None:
                top, left, height, width = window
                img = img.crop((left, top, left + width, top + height))
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"cannot read {file_kind(frame)} {frame} ({err}); "
                           f"check the dataset with ds-deblur check ROOT") from err
