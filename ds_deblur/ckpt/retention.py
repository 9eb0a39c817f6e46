"""Which step tags stay on disk: the newest ``keep_last`` complete ones, ``best``, and whatever is still in use."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from ds_deblur.ckpt import universal
from ds_deblur.ckpt.tags import step_tags, tag_problem


def retain(ckpt_dir: Path, keep_last: int, in_use: Iterable[str] = ()) -> list[str]:
    """Remove step tags beyond the newest ``keep_last`` complete ones (rank 0 only, after a commit).

    Never removes the newest complete tag, ``best``, anything not named ``step_N`` or a tag named in ``in_use``
    (a background export still reading it); incomplete step tags older than the newest complete one are
    leftovers of crashed saves and go too. A tag's universal cache goes with it. Returns the removed tags."""
    steps = step_tags(ckpt_dir)
    complete = [(s, p) for s, p in steps if tag_problem(p) is None]
    if not complete:
        return []
    keep = {p for _, p in complete[-keep_last:]} | {Path(ckpt_dir) / name for name in in_use}
    newest = complete[-1][0]
    doomed = [p for s, p in steps if p not in keep and s < newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        universal.remove(path)
    return [p.name for p in doomed]
