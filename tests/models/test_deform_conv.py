"""Deformable convolution and flow warping on grid_sample against plain conv2d and explicit references."""
import pytest
import torch
import torch.nn.functional as F

from ds_deblur.models.deform_conv import DCNv2PackFlowGuided, deform_conv2d, flow_warp


def _bilinear_zeros(img: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """torchvision's bilinear_interpolate: img (C, H, W), y/x (P,) -> (C, P); corners outside count as 0."""
    c, h, w = img.shape
    y0, x0 = torch.floor(y), torch.floor(x)
    out = torch.zeros(c, y.numel(), dtype=img.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wgt = (1 - (y - yy).abs()) * (1 - (x - xx).abs())
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            vals = img[:, yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()]
            out += torch.where(inside, wgt * vals, torch.zeros_like(vals))
    outside = (y <= -1) | (y >= h) | (x <= -1) | (x >= w)
    return out.masked_fill(outside, 0.0)


def _reference_deform_conv(inp, offset, weight, bias, stride, pad, dil, mask):
    """Slow per-tap DCNv2, written from the definition (torchvision's offset layout)."""
    n, c_in, h, w = inp.shape
    c_out, c_per_wg, kh, kw = weight.shape
    wg = c_in // c_per_wg
    ho, wo = offset.shape[-2:]
    groups = offset.shape[1] // (2 * kh * kw)
    cg = c_in // groups
    out = torch.zeros(n, c_out, ho, wo, dtype=inp.dtype)
    oy, ox = torch.meshgrid(torch.arange(ho), torch.arange(wo), indexing="ij")
    for b in range(n):
        cols = torch.zeros(c_in, kh * kw, ho * wo, dtype=inp.dtype)
        for g in range(groups):
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    dy = offset[b, g * 2 * kh * kw + 2 * k].flatten()
                    dx = offset[b, g * 2 * kh * kw + 2 * k + 1].flatten()
                    y = (oy * stride - pad + i * dil).flatten() + dy
                    x = (ox * stride - pad + j * dil).flatten() + dx
                    vals = _bilinear_zeros(inp[b, g * cg:(g + 1) * cg], y, x)
                    cols[g * cg:(g + 1) * cg, k] = vals * mask[b, g * kh * kw + k].flatten()
        cols = cols.view(wg, c_per_wg * kh * kw, ho * wo)
        res = weight.view(wg, c_out // wg, -1) @ cols
        out[b] = res.view(c_out, ho, wo) + bias.view(-1, 1, 1)
    return out


@pytest.mark.parametrize("stride,pad,dil,weight_groups", [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (1, 0, 1, 2)])
def test_zero_offset_unit_mask_is_conv2d(stride, pad, dil, weight_groups):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    weight = torch.randn(6, 8 // weight_groups, 3, 3, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, stride, pad, dil, groups=weight_groups)
    groups = 2
    offset = torch.zeros(2, 2 * groups * 9, *ref.shape[-2:], dtype=torch.float64)
    mask = torch.ones(2, groups * 9, *ref.shape[-2:], dtype=torch.float64)
    out = deform_conv2d(x, offset, weight, bias, stride, pad, dil, mask)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("stride,weight_groups", [(1, 1), (2, 2)])
def test_matches_explicit_per_tap_reference(stride, weight_groups):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    weight = torch.randn(4, 4 // weight_groups, 3, 3, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    ho, wo = (6 + 2 - 3) // stride + 1, (7 + 2 - 3) // stride + 1
    offset = 3.0 * torch.randn(2, 2 * 2 * 9, ho, wo, dtype=torch.float64)  # many taps land outside the image
    mask = torch.rand(2, 2 * 9, ho, wo, dtype=torch.float64)
    out = deform_conv2d(x, offset, weight, bias, stride, 1, 1, mask)
    ref = _reference_deform_conv(x, offset, weight, bias, stride, 1, 1, mask)
    torch.testing.assert_close(out, ref)


def test_gradcheck():
    torch.manual_seed(2)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # Fractional offsets away from integers (where bilinear sampling has kinks).
    offset = (torch.randint(-3, 3, (1, 2 * 2 * 9, 5, 5)) + 0.2 + 0.6 * torch.rand(1, 36, 5, 5)).double()
    offset.requires_grad_(True)
    mask = torch.rand(1, 2 * 9, 5, 5, dtype=torch.float64, requires_grad=True)

    def fn(x, offset, weight, bias, mask):
        return deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)

    assert torch.autograd.gradcheck(fn, (x, offset, weight, bias, mask), fast_mode=True)


def test_bfloat16_samples_at_full_precision_coordinates():
    # On a wide frame, bf16 coordinates would be off by several pixels; the result must stay close to fp32.
    torch.manual_seed(3)
    x = torch.randn(1, 2, 4, 1024)
    weight = torch.randn(2, 2, 3, 3)
    offset = torch.full((1, 18, 4, 1024), 0.25)
    mask = torch.ones(1, 9, 4, 1024)
    ref = deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
    out = deform_conv2d(x.bfloat16(), offset.bfloat16(), weight.bfloat16(), None, 1, 1, 1, mask.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_shape_errors_name_the_shapes():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="offset shape"):
        deform_conv2d(x, torch.zeros(1, 18, 4, 4), torch.randn(2, 4, 3, 3), padding=1)
    with pytest.raises(ValueError, match="mask shape"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), torch.randn(2, 4, 3, 3), padding=1, mask=torch.ones(1, 8, 5, 5))


def test_flow_warp_integer_flow_shifts_with_zero_fill():
    x = torch.arange(2 * 5 * 6, dtype=torch.float64).view(1, 2, 5, 6)
    flow = torch.zeros(1, 2, 5, 6, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # sample from x + 2, y - 1
    out = flow_warp(x, flow)
    torch.testing.assert_close(out[:, :, 1:, :4], x[:, :, :-1, 2:])
    assert out[:, :, 0].abs().sum() == 0 and out[:, :, :, 4:].abs().sum() == 0


def test_flow_warp_nearest4_gathers_the_four_neighbours():
    torch.manual_seed(4)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    flow = 2.5 * torch.randn(1, 2, 6, 7, dtype=torch.float64)
    flow[0, :, 0, 0] = torch.tensor([1.0, 2.0])  # exactly integer: all four neighbours coincide
    out = flow_warp(x, flow, "nearest4")
    assert out.shape == (1, 12, 6, 7)
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    px, py = xs + flow[0, 0], ys + flow[0, 1]
    corners = [(px.floor(), py.floor()), (px.floor(), py.ceil()), (px.ceil(), py.floor()), (px.ceil(), py.ceil())]
    for k, (cx, cy) in enumerate(corners):
        inside = (cx >= 0) & (cx <= 6) & (cy >= 0) & (cy <= 5)
        ref = x[0][:, cy.clamp(0, 5).long(), cx.clamp(0, 6).long()] * inside
        torch.testing.assert_close(out[0, 3 * k:3 * k + 3], ref)


def test_flow_guided_dcn_starts_as_flow_warp_with_half_mask():
    """conv_offset's last layer starts at zero: offsets are exactly the flow ((dx, dy) -> (dy, dx) pairs)."""
    torch.manual_seed(5)
    dcn = DCNv2PackFlowGuided(4, 4, 3, padding=1, deformable_groups=2, pa_frames=2).double()
    x = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    flow = torch.zeros(1, 2, 6, 8, dtype=torch.float64)
    flow[:, 0] = 1.0  # one pixel to the right
    out = dcn(x, flow_warp(x, flow), torch.randn_like(x), flow)
    # Tap j of output column c reads input column c + j (zero beyond the right edge); rows as a padded conv.
    ref = F.conv2d(F.pad(x, (0, 2, 1, 1)), 0.5 * dcn.weight, dcn.bias)
    torch.testing.assert_close(out, ref)


def test_backward_keeps_inputs_not_the_sampled_columns():
    torch.manual_seed(6)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    weight = torch.randn(8, 32, 3, 3, requires_grad=True)
    offset = torch.randn(2, 2 * 9, 16, 16, requires_grad=True)
    mask = torch.rand(2, 9, 16, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = deform_conv2d(x, offset, weight, None, 1, 1, 1, mask)
    inputs = x.numel() + weight.numel() + offset.numel() + mask.numel()
    assert sum(saved) <= inputs
    assert sum(saved) < 9 * x.numel()  # one copy of the columns alone would be 9 * x.numel()
    out.sum().backward()
    assert all(t.grad is not None for t in (x, weight, offset, mask))


@pytest.mark.parametrize("padding", ["border", "reflection"])
def test_nan_coordinates_do_not_crash_backward(padding):
    # PyTorch's CPU grid_sample backward segfaults at NaN coordinates with these paddings: run it in a child so a
    # regression fails this test instead of killing the test session.
    import subprocess
    import sys
    code = f"""
import torch
from ds_deblur.models.deform_conv import sample_pixels
x = torch.rand(1, 3, 8, 8, requires_grad=True)
px, py = torch.rand(1, 8, 8) * 7, torch.rand(1, 8, 8) * 7
px[0, 0, 0] = float("nan")
out = sample_pixels(x, px.requires_grad_(), py, padding_mode="{padding}")
out.sum().backward()
assert torch.isfinite(x.grad).all()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
