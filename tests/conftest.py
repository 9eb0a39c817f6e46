from pathlib import Path

import pytest

from support.tag_factory import build_tags


@pytest.fixture(scope="session")
def tags(tmp_path_factory) -> Path:
    """root/ckpts with every tag of TAGS (latest -> z2_w2) and root/NAME.ref.pt with the ranks' references."""
    return build_tags(tmp_path_factory.getbasetemp() / "ds_tags")
