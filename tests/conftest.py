from pathlib import Path

import pytest

from support.tag_factory import build_tags
from support.train_utils import make_dataset


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """The small synthetic dataset the training runs share (support.train_utils.SYNTH). Read-only: a test that
    changes data works on a copy."""
    return make_dataset(tmp_path_factory.mktemp("train_data") / "synth")


@pytest.fixture(scope="session")
def tags(tmp_path_factory) -> Path:
    """root/ckpts with every tag of TAGS (latest -> z2_w2) and root/NAME.ref.pt with the ranks' references."""
    return build_tags(tmp_path_factory.getbasetemp() / "ds_tags")
