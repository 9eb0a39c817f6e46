import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ds_deblur.config import load_config
from ds_deblur.losses import VGG16_LAYERS, DeblurLoss, VGGPerceptualLoss, charbonnier_loss

# Conv layer indices of torchvision's vgg16().features, with (in, out) channels.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def random_vgg16_features() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {}
    for idx, (cin, cout) in VGG16_CONVS.items():
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * math.sqrt(2 / (9 * cin))
        state[f"features.{idx}.bias"] = torch.randn(cout, generator=gen) * 0.01
    return state


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory) -> Path:
    """Full torchvision-style state dict: all 13 conv layers plus (tiny stand-in) classifier keys."""
    state = random_vgg16_features()
    state["classifier.0.weight"] = torch.zeros(2, 2)
    state["classifier.0.bias"] = torch.zeros(2)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(state, path)
    return path


def images(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_charbonnier_matches_hand_computation():
    pred = torch.zeros(4)
    target = torch.tensor([0.0, 0.003, -0.004, 1.0])
    d2 = 1e-3**2
    expected = (math.sqrt(d2) + math.sqrt(9e-6 + d2) + math.sqrt(16e-6 + d2) + math.sqrt(1 + d2)) / 4
    assert charbonnier_loss(pred, target, delta=1e-3).item() == pytest.approx(expected, rel=1e-6)


def test_charbonnier_puts_delta_squared_inside_the_root():
    x = images(2, 3, 8, 8, seed=1)
    # Identical inputs give exactly delta (the BasicSR eps-unsquared convention would give sqrt(delta)).
    assert charbonnier_loss(x, x.clone()).item() == pytest.approx(1e-3, rel=1e-6)
    assert charbonnier_loss(x, x.clone(), delta=0.1).item() == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_charbonnier_keeps_precision_for_half_inputs(dtype):
    x = images(2, 3, 8, 8, seed=2).to(dtype)
    loss = charbonnier_loss(x, x.clone())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1e-3, rel=1e-6)


@pytest.mark.parametrize("layer", list(VGG16_LAYERS))
def test_vgg_is_truncated_after_the_requested_relu(vgg_file, layer):
    loss = VGGPerceptualLoss(vgg_file, layer)
    expected_convs = {"relu1_2": 2, "relu2_2": 4, "relu3_3": 7, "relu4_3": 10, "relu5_3": 13}[layer]
    assert len(loss.features) == VGG16_LAYERS[layer] + 1
    assert isinstance(loss.features[-1], torch.nn.ReLU)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in loss.features) == expected_convs


def test_vgg_features_match_a_manual_forward(vgg_file):
    state = torch.load(vgg_file, weights_only=True)
    loss = VGGPerceptualLoss(vgg_file, "relu1_2")
    x = images(2, 3, 12, 10, seed=3)
    xn = (x - IMAGENET_MEAN) / IMAGENET_STD
    h = F.relu(F.conv2d(xn, state["features.0.weight"], state["features.0.bias"], padding=1))
    h = F.relu(F.conv2d(h, state["features.2.weight"], state["features.2.bias"], padding=1))
    assert torch.allclose(loss._extract(x), h, atol=1e-5)

    y = images(2, 3, 12, 10, seed=4)
    hy = F.relu(F.conv2d((y - IMAGENET_MEAN) / IMAGENET_STD, state["features.0.weight"], state["features.0.bias"],
                         padding=1))
    hy = F.relu(F.conv2d(hy, state["features.2.weight"], state["features.2.bias"], padding=1))
    assert loss(x, y).item() == pytest.approx((h - hy).abs().mean().item(), rel=1e-5)


def test_perceptual_zero_when_equal_positive_otherwise_and_grad_reaches_pred(vgg_file):
    loss = VGGPerceptualLoss(vgg_file, "relu2_2")
    target = images(1, 2, 3, 16, 16, seed=5)  # (B, T, 3, H, W)
    assert loss(target.clone(), target).item() == 0.0

    pred = (target + 0.1 * images(1, 2, 3, 16, 16, seed=6)).clamp(0, 1).requires_grad_(True)
    target.requires_grad_(True)
    value = loss(pred, target)
    assert value.item() > 0
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None  # ground-truth features are computed without a graph
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())


def test_perceptual_stays_frozen_in_eval_mode(vgg_file):
    loss = VGGPerceptualLoss(vgg_file, "relu1_2")
    loss.train()
    assert not loss.features.training
    assert not any(p.requires_grad for p in loss.parameters())


def test_frames_flattened_like_separate_images(vgg_file):
    loss = VGGPerceptualLoss(vgg_file, "relu1_2")
    pred, target = images(2, 3, 3, 8, 8, seed=7), images(2, 3, 3, 8, 8, seed=8)
    flat = loss(pred.reshape(6, 3, 8, 8), target.reshape(6, 3, 8, 8))
    assert loss(pred, target).item() == pytest.approx(flat.item(), rel=1e-6)


@pytest.mark.parametrize("prefix", ["features.", ""])
def test_features_only_state_dict_loads(vgg_file, tmp_path, prefix):
    full = torch.load(vgg_file, weights_only=True)
    features_only = {prefix + k.removeprefix("features."): v for k, v in full.items() if k.startswith("features.")}
    path = tmp_path / "features.pth"
    torch.save(features_only, path)
    x, y = images(1, 3, 8, 8, seed=9), images(1, 3, 8, 8, seed=10)
    expected = VGGPerceptualLoss(vgg_file, "relu2_2")(x, y)
    assert VGGPerceptualLoss(path, "relu2_2")(x, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_missing_weights_file_says_what_to_do(tmp_path):
    path = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(FileNotFoundError) as err:
        VGGPerceptualLoss(path)
    message = str(err.value)
    for needle in (str(path), "never downloaded", "vgg16-397923af.pth", "LOSS.VGG_PATH"):
        assert needle in message


def test_unreadable_weights_file_names_it(tmp_path):
    path = tmp_path / "vgg16.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RuntimeError) as err:
        VGGPerceptualLoss(path)
    assert str(path) in str(err.value) and "LOSS.VGG_PATH" in str(err.value)


def test_foreign_keys_are_named(tmp_path):
    state = {"module." + k: v for k, v in random_vgg16_features().items()}
    path = tmp_path / "wrapped.pth"
    torch.save(state, path)
    with pytest.raises(KeyError, match="module.features.0.weight"):
        VGGPerceptualLoss(path, "relu1_2")


def test_missing_keys_are_named(vgg_file, tmp_path):
    state = torch.load(vgg_file, weights_only=True)
    del state["features.2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(KeyError, match=r"features\.2\.weight"):
        VGGPerceptualLoss(path, "relu1_2")


def test_wrong_shapes_are_named(vgg_file, tmp_path):
    state = torch.load(vgg_file, weights_only=True)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    path = tmp_path / "gray.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"features\.0\.weight"):
        VGGPerceptualLoss(path, "relu1_2")


def test_unknown_layer_names_the_config_key(vgg_file):
    with pytest.raises(ValueError, match="LOSS.VGG_LAYER"):
        VGGPerceptualLoss(vgg_file, "relu3_4")


def test_deblur_loss_without_vgg_is_charbonnier():
    pred, target = images(1, 2, 3, 8, 8, seed=11), images(1, 2, 3, 8, 8, seed=12)
    total, parts = DeblurLoss(delta=1e-3)(pred, target)
    assert total.item() == pytest.approx(charbonnier_loss(pred, target).item(), rel=1e-7)
    assert set(parts) == {"loss_charbonnier"}


def test_deblur_loss_vgg_weight_without_path_is_an_error():
    with pytest.raises(ValueError) as err:
        DeblurLoss(vgg_weight=0.1)
    assert "LOSS.VGG_WEIGHT" in str(err.value) and "LOSS.VGG_PATH" in str(err.value)


def test_deblur_loss_combines_parts(vgg_file):
    criterion = DeblurLoss(delta=1e-3, vgg_weight=0.1, vgg_layer="relu1_2", vgg_path=vgg_file)
    target = images(1, 2, 3, 8, 8, seed=13)
    pred = images(1, 2, 3, 8, 8, seed=14).requires_grad_(True)
    total, parts = criterion(pred, target)
    assert set(parts) == {"loss_charbonnier", "loss_perceptual"}
    assert parts["loss_charbonnier"].item() == pytest.approx(charbonnier_loss(pred, target).item(), rel=1e-6)
    perceptual = VGGPerceptualLoss(vgg_file, "relu1_2")(pred, target)
    assert parts["loss_perceptual"].item() == pytest.approx(perceptual.item(), rel=1e-6)
    assert total.item() == pytest.approx(parts["loss_charbonnier"].item() + 0.1 * perceptual.item(), rel=1e-6)
    assert total.requires_grad and not any(p.requires_grad for p in parts.values())


def test_deblur_loss_from_config(vgg_file):
    cfg = load_config({"DATA": {"ROOT": "/unused"}},
                      overrides=["LOSS.VGG_WEIGHT=0.5", "LOSS.VGG_LAYER=relu2_2", f"LOSS.VGG_PATH={vgg_file}",
                                 "LOSS.CHARBONNIER_DELTA=0.01"])
    criterion = DeblurLoss.from_config(cfg)
    assert criterion.delta == 0.01 and criterion.vgg_weight == 0.5
    assert criterion.perceptual is not None and criterion.perceptual.layer == "relu2_2"


@pytest.mark.parametrize("kwargs, key", [({"delta": 0.0}, "LOSS.CHARBONNIER_DELTA"),
                                         ({"vgg_weight": -1.0}, "LOSS.VGG_WEIGHT")])
def test_deblur_loss_rejects_bad_values(kwargs, key):
    with pytest.raises(ValueError, match=key):
        DeblurLoss(**kwargs)
