"""KAIR's meta_info files (S-VRT's ``meta_info_file``, ``DATA.META_INFO_FILE``): which sequences of a split are
read, and which of their frames.

One line per sequence: ``SEQ FRAMES SHAPE [START]`` separated by white space, e.g. ``GOPR0372_07_00 100 0 47``
(S-VRT's GoPro files write ``0`` for the shape) or ``000 100 (720,1280,3) 00000000`` (REDS): the sequence reads
frames START .. START + FRAMES - 1 (START 0 when absent), matched to frame files by the number of their stem. The
shape is not checked against the frames (the frames' own headers are). Blank lines are skipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ds_deblur.errors import DatasetError

FORMAT = "'SEQ FRAMES (H,W,C) [START]', e.g. 'GOPR0372_07_00 100 (720,1280,3) 47'"


def read_meta_info(path: Union[str, os.PathLike]) -> dict[str, range]:
    """{sequence: the frame numbers it lists} of a meta_info file, in the file's order."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise DatasetError(f"cannot read the meta_info file {path} ({err.strerror or err}; DATA.META_INFO_FILE)") \
            from None
    listed: dict[str, range] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            name, frames = _parse_line(line, f"{path}:{number}")
            if name in listed:
                raise DatasetError(f"{path}:{number}: {name} is listed twice")
            listed[name] = frames
    if not listed:
        raise DatasetError(f"{path} lists no sequences (expected lines {FORMAT})")
    return listed


def _parse_line(line: str, where: str) -> tuple[str, range]:
    fields = line.split()
    if len(fields) not in (3, 4):
        raise DatasetError(f"{where}: expected {FORMAT}, got {line.strip()!r}")
    try:
        count, start = int(fields[1]), int(fields[3]) if len(fields) == 4 else 0
    except ValueError:
        raise DatasetError(f"{where}: the frame count and start must be whole numbers ({FORMAT}), got "
                           f"{line.strip()!r}") from None
    if count < 1 or start < 0:
        raise DatasetError(f"{where}: a sequence lists at least one frame from a start >= 0, got {line.strip()!r}")
    return fields[0], range(start, start + count)
