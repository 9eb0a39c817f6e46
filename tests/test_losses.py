import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ds_deblur.config import load_config
from ds_deblur.errors import WeightsNotFoundError
from ds_deblur.losses import HUB_VGG16_FILES, VGG16_LAYERS, DeblurLoss, VGGPerceptualLoss, charbonnier_loss

# Conv layer indices of torchvision's vgg16().features, with (in, out) channels.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
               14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
               28: (512, 512)}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# torchvision's vgg16().features: 2x2 max-pools at these indices, a ReLU after every conv; the named ReLUs' indices.
VGG16_POOLS = {4, 9, 16, 23, 30}
RELU_INDEX = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
FEATURES_FILE, IMAGENET_FILE = "vgg16_features-amdegroot-88682ab5.pth", "vgg16-397923af.pth"


def random_vgg16_features(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
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
    assert torch.allclose(loss._extract(x)[0], h, atol=1e-5)

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


def test_deblur_loss_without_vgg_is_charbonnier():
    pred, target = images(1, 2, 3, 8, 8, seed=11), images(1, 2, 3, 8, 8, seed=12)
    total, parts = DeblurLoss(delta=1e-3)(pred, target)
    assert total.item() == pytest.approx(charbonnier_loss(pred, target).item(), rel=1e-7)
    assert set(parts) == {"loss_charbonnier"}


def test_deblur_loss_combines_parts(vgg_file):
    criterion = DeblurLoss(delta=1e-3, vgg_weight=0.1, vgg_layers="relu1_2", vgg_path=vgg_file)
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
                      overrides=["LOSS.VGG_PERCEPTUAL.WEIGHT=0.5", "LOSS.VGG_PERCEPTUAL.LAYERS=[relu2_2]",
                                 f"LOSS.VGG_PATH={vgg_file}", "LOSS.CHARBONNIER.DELTA=0.01"])
    criterion = DeblurLoss.from_config(cfg)
    assert criterion.delta == 0.01 and criterion.vgg_weight == 0.5
    assert criterion.perceptual is not None and criterion.perceptual.layers == ("relu2_2",)


# --- torchvision's two VGG16 files in torch's hub cache; the original trainer's perceptual term ---------------------

def reference_features(state: dict, x: torch.Tensor, last: int) -> dict[int, torch.Tensor]:
    """torchvision's ``vgg16().features[:last + 1]`` written out with functional ops: every intermediate output."""
    outputs, h = {}, x
    for index in range(last + 1):
        if index in VGG16_CONVS:
            h = F.conv2d(h, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1)
        elif index in VGG16_POOLS:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        else:
            h = F.relu(h)
        outputs[index] = h
    return outputs


def reference_perceptual(state: dict, pred: torch.Tensor, target: torch.Tensor, layers: list[str]) -> float:
    """The original trainer's perceptual term from its definition: (B, T) merged, ImageNet mean/std applied to the
    [0, 1] images (for either weights file), L1 with mean reduction at each layer, averaged over the layers."""
    def normalised(x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(-1, *x.shape[-3:]) - IMAGENET_MEAN) / IMAGENET_STD

    last = max(RELU_INDEX[layer] for layer in layers)
    fp, ft = reference_features(state, normalised(pred), last), reference_features(state, normalised(target), last)
    distances = [(fp[RELU_INDEX[layer]] - ft[RELU_INDEX[layer]]).abs().mean().item() for layer in layers]
    return sum(distances) / len(distances)


@pytest.fixture(scope="session")
def hub_stand_ins(tmp_path_factory) -> dict[str, Path]:
    """Stand-ins for torchvision's VGG16 files under their hub-cache names: the real ``features`` keys and shapes with
    random values, a different seed each (which file was used shows in the numbers), and ``classifier`` keys of
    tiny shapes (the real ones are 500 MB): NaN in the features file, as in torchvision's IMAGENET1K_FEATURES."""
    folder = tmp_path_factory.mktemp("vgg_stand_ins")
    paths = {}
    for seed, (name, fill) in enumerate([(FEATURES_FILE, math.nan), (IMAGENET_FILE, 0.01)], start=1):
        state = random_vgg16_features(seed)
        for index in (0, 3, 6):
            state[f"classifier.{index}.weight"] = torch.full((2, 2), fill)
            state[f"classifier.{index}.bias"] = torch.full((2,), fill)
        paths[name] = folder / name
        torch.save(state, paths[name])
    return paths


def fake_hub(tmp_path: Path, monkeypatch, stand_ins: dict[str, Path], names) -> Path:
    """A torch hub cache (``$TORCH_HOME/hub/checkpoints``) holding ``names``; returns its checkpoints folder."""
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in names:
        (checkpoints / name).symlink_to(stand_ins[name])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return checkpoints


def perceptual_config(*sets: str):
    return load_config({"DATA": {"ROOT": "/unused"}}, overrides=["LOSS.VGG_PERCEPTUAL.WEIGHT=0.1", *sets])


def test_hub_files_are_the_two_torchvision_files_features_first():
    assert list(HUB_VGG16_FILES) == [FEATURES_FILE, IMAGENET_FILE]


@pytest.mark.parametrize("present, used", [((FEATURES_FILE, IMAGENET_FILE), FEATURES_FILE),
                                           ((IMAGENET_FILE,), IMAGENET_FILE), ((FEATURES_FILE,), FEATURES_FILE)])
def test_null_vgg_path_takes_the_original_trainers_hub_file_first_and_says_so(
        hub_stand_ins, tmp_path, monkeypatch, present, used):
    checkpoints = fake_hub(tmp_path, monkeypatch, hub_stand_ins, present)
    said: list[str] = []
    criterion = DeblurLoss.from_config(perceptual_config("LOSS.VGG_PERCEPTUAL.LAYERS=[relu2_2]"), said.append)
    weights = {FEATURES_FILE: "IMAGENET1K_FEATURES", IMAGENET_FILE: "IMAGENET1K_V1"}[used]
    assert len(said) == 1 and str(checkpoints / used) in said[0] and weights in said[0]
    assert "LOSS.VGG_PATH is null" in said[0]
    pred, target = images(1, 2, 3, 16, 16, seed=20), images(1, 2, 3, 16, 16, seed=21)
    expected = reference_perceptual(torch.load(hub_stand_ins[used], weights_only=True), pred, target, ["relu2_2"])
    assert criterion(pred, target)[1]["loss_perceptual"].item() == pytest.approx(expected, rel=1e-5)


def test_vgg_path_wins_over_the_hub_cache(hub_stand_ins, vgg_file, tmp_path, monkeypatch):
    fake_hub(tmp_path, monkeypatch, hub_stand_ins, HUB_VGG16_FILES)
    said: list[str] = []
    DeblurLoss.from_config(perceptual_config(f"LOSS.VGG_PATH={vgg_file}"), said.append)
    assert said == [f"[loss] VGG16 perceptual weights: {vgg_file} (LOSS.VGG_PATH)"]


@pytest.mark.parametrize("name", [FEATURES_FILE, IMAGENET_FILE])
@pytest.mark.parametrize("layers", [["relu3_3"], ["relu1_2", "relu2_2"]])
def test_perceptual_term_is_the_original_trainers(hub_stand_ins, name, layers):
    pred, target = images(2, 2, 3, 16, 16, seed=22), images(2, 2, 3, 16, 16, seed=23)
    expected = reference_perceptual(torch.load(hub_stand_ins[name], weights_only=True), pred, target, layers)
    assert VGGPerceptualLoss(hub_stand_ins[name], layers)(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_no_vgg_file_anywhere_names_both_files_and_vgg_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(WeightsNotFoundError) as err:
        DeblurLoss(vgg_weight=0.1)
    message = str(err.value)
    for needle in (FEATURES_FILE, IMAGENET_FILE, "LOSS.VGG_PATH", "never downloaded",
                   str(tmp_path / "empty_torch_home" / "hub" / "checkpoints")):
        assert needle in message
