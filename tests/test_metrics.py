import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ds_deblur.distributed import free_port
from ds_deblur.metrics import MetricSums, psnr, psnr_y, rgb_to_y, ssim, ssim_y


def images(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Straight from Wang et al. 2004: weighted local statistics window by window, valid positions only."""
    offsets = np.arange(11) - 5
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def reference_y(rgb: np.ndarray) -> np.ndarray:
    return (16 + 65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2]) / 255


def test_psnr_of_constant_offsets_per_frame():
    target = images(2, 3, 3, 8, 8, seed=0) * 0.8  # (B, T, 3, H, W), room for the offsets below
    offsets = torch.tensor([0.1, 0.05, 0.01, 0.2, 0.1, 0.02]).view(2, 3, 1, 1, 1)
    values = psnr(target + offsets, target)
    assert values.shape == (6,) and values.dtype == torch.float64
    expected = [20 * math.log10(1 / o) for o in offsets.flatten().tolist()]
    assert values.tolist() == pytest.approx(expected, abs=1e-5)


def test_psnr_of_identical_frames_is_capped_at_100db():
    x = images(3, 3, 8, 8, seed=1)
    assert psnr(x, x.clone()).tolist() == [100.0, 100.0, 100.0]
    assert psnr(x * 255, x * 255, data_range=255).tolist() == pytest.approx([100.0] * 3)


def test_psnr_data_range_scales():
    x, y = images(2, 3, 8, 8, seed=2), images(2, 3, 8, 8, seed=3)
    assert psnr(x * 255, y * 255, data_range=255.0).tolist() == pytest.approx(psnr(x, y).tolist(), abs=1e-6)


def test_rgb_to_y_on_known_pixels():
    pixels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                           [0.5, 0.25, 0.75]], dtype=torch.float64)
    img = pixels.T.reshape(3, 1, 6)  # (3, H=1, W=6)
    y = rgb_to_y(img)
    assert y.shape == (1, 1, 6)
    expected = [16 / 255, 235 / 255, (16 + 65.481) / 255, (16 + 128.553) / 255, (16 + 24.966) / 255,
                (16 + 65.481 * 0.5 + 128.553 * 0.25 + 24.966 * 0.75) / 255]
    assert y.flatten().tolist() == pytest.approx(expected, abs=1e-12)


def test_psnr_y_matches_formula():
    pred, target = images(2, 3, 8, 8, seed=4), images(2, 3, 8, 8, seed=5)
    for i in range(2):
        mse = np.mean((reference_y(pred[i].double().numpy()) - reference_y(target[i].double().numpy())) ** 2)
        assert psnr_y(pred, target)[i].item() == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)


def test_ssim_of_identical_frames_is_one():
    x = images(2, 1, 16, 16, seed=6)
    assert ssim(x, x.clone()).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_matches_reference_implementation():
    base = torch.linspace(0, 1, 24).view(1, 24).expand(20, 24)
    clean = torch.stack([images(20, 24, seed=7), base]).unsqueeze(1)  # (2, 1, 20, 24): noise and a ramp
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(8))).clamp(0, 1)
    values = ssim(noisy, clean)
    for i in range(2):
        expected = reference_ssim(noisy[i, 0].double().numpy(), clean[i, 0].double().numpy())
        assert values[i].item() == pytest.approx(expected, abs=1e-10)


def test_ssim_y_matches_reference_on_luma():
    pred, target = images(3, 16, 18, seed=9), images(3, 16, 18, seed=10)
    expected = reference_ssim(reference_y(pred.double().numpy()), reference_y(target.double().numpy()))
    assert ssim_y(pred, target).tolist() == pytest.approx([expected], abs=1e-10)


def test_ssim_decreases_with_noise():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    clean = (0.5 + 0.4 * torch.sin(6 * xx) * torch.cos(4 * yy)).view(1, 1, 32, 32)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(11))
    scores = [ssim((clean + s * noise).clamp(0, 1), clean).item() for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_rejects_rgb_and_tiny_frames():
    with pytest.raises(ValueError, match="ssim_y"):
        ssim(images(3, 16, 16, seed=12), images(3, 16, 16, seed=13))
    with pytest.raises(ValueError, match="11x11"):
        ssim(images(1, 10, 16, seed=12), images(1, 10, 16, seed=13))


def test_metric_sums_average_per_frame_and_clamp_pred():
    batches = [(images(1, 2, 3, 16, 16, seed=14) * 1.4 - 0.2, images(1, 2, 3, 16, 16, seed=15)),
               (images(1, 1, 3, 16, 16, seed=16), images(1, 1, 3, 16, 16, seed=17))]
    sums = MetricSums()
    for pred, target in batches:
        sums.update(pred, target)
    assert sums.count == 3
    pred = torch.cat([p.reshape(-1, 3, 16, 16) for p, _ in batches]).clamp(0, 1)
    target = torch.cat([t.reshape(-1, 3, 16, 16) for _, t in batches])
    means = sums.all_reduce().means()  # no process group: all_reduce leaves the sums alone
    assert means["psnr_rgb"] == pytest.approx(psnr(pred, target).mean().item(), abs=1e-12)
    assert means["psnr_y"] == pytest.approx(psnr_y(pred, target).mean().item(), abs=1e-12)
    assert means["ssim_y"] == pytest.approx(ssim_y(pred, target).mean().item(), abs=1e-12)


def test_metric_sums_guards():
    sums = MetricSums()
    with pytest.raises(RuntimeError, match="no frames"):
        sums.means()
    sums.all_reduce()
    with pytest.raises(RuntimeError, match="double-count"):
        sums.all_reduce()


def dist_frames() -> tuple[torch.Tensor, torch.Tensor]:
    target = images(4, 3, 12, 12, seed=20)
    return (target + 0.05 * images(4, 3, 12, 12, seed=21)).clamp(0, 1), target


def dist_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        pred, target = dist_frames()
        share = slice(0, 1) if rank == 0 else slice(1, 4)  # unequal shares: a mean of rank means would be wrong
        sums = MetricSums()
        sums.update(pred[share], target[share])
        torch.save({"means": sums.all_reduce().means(), "count": sums.count}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_metric_sums_all_reduce_gives_global_per_frame_mean(tmp_path):
    mp.spawn(dist_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    pred, target = dist_frames()
    expected = MetricSums()
    expected.update(pred, target)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["count"] == 4
        assert result["means"] == pytest.approx(expected.means(), abs=1e-12)
