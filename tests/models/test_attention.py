"""Window attention on SDPA against explicit softmax attention with full per-window masks (float64)."""
import math

import pytest
import torch

from ds_deblur.models import attention
from ds_deblur.models.attention import (TMSAG, WindowAttention, get_window_size, relative_position_index,
                                        shifted_window_masks, sine_position_encoding, window_partition, window_reverse,
                                        window_sdpa)


def _full_masks(size, ws, ss):
    """(nW, N, N) mask of a rolled volume, straight from the definition: label the three regions along every
    shifted axis (untouched, shifted in, wrapped around); tokens with different labels are masked with -100."""
    labels = torch.zeros(size, dtype=torch.long)
    for axis, (n, k, s) in enumerate(zip(size, ws, ss)):
        if s == 0:
            continue
        region = torch.zeros(n, dtype=torch.long)
        region[n - k:n - s] = 1
        region[n - s:] = 2
        shape = [1, 1, 1]
        shape[axis] = n
        labels = labels * 3 + region.view(shape)
    win = window_partition(labels[None, ..., None], ws)[..., 0]
    return (win[:, :, None] != win[:, None, :]).double() * -100.0


def _scatter(masks, num_windows, n):
    full = torch.zeros(num_windows, n, n, dtype=torch.float64)
    for idx, m in masks:
        full[idx] = m.double()
    return full


def _explicit_attention(q, k, v, bias_or_mask, scale):
    attn = (q * scale) @ k.transpose(-2, -1) + bias_or_mask
    return attn.softmax(-1) @ v


def test_window_partition_roundtrip_and_order():
    x = torch.randn(2, 4, 8, 6, 3)
    win = window_partition(x, (2, 4, 3))
    assert win.shape == (2 * 2 * 2 * 2, 2 * 4 * 3, 3)
    torch.testing.assert_close(win[1], x[0, 0:2, 0:4, 3:6].reshape(-1, 3))  # windows ordered (d, h, w)
    torch.testing.assert_close(window_reverse(win, (2, 4, 3), 2, 4, 8, 6), x)


def test_window_is_clipped_to_short_axes():
    assert get_window_size((5, 16, 8), (6, 8, 8), (3, 4, 4)) == ((5, 8, 8), (0, 4, 0))


@pytest.mark.parametrize("size,ws,ss", [
    ((4, 16, 24), (2, 8, 8), (1, 4, 4)),
    ((6, 8, 16), (6, 4, 8), (0, 2, 4)),
    ((2, 12, 8), (2, 4, 4), (1, 2, 0)),
])
def test_shift_masks_equal_the_region_definition(size, ws, ss):
    masks = shifted_window_masks(size, ws, ss, torch.device("cpu"))
    full = _full_masks(size, ws, ss)
    n = math.prod(ws)
    assert masks.num_windows == full.shape[0]
    torch.testing.assert_close(_scatter(masks.groups, masks.num_windows, n), full)
    half = n // 2
    torch.testing.assert_close(_scatter(masks.first_frame, masks.num_windows, half), full[:, :half, :half])
    # Only the straddling windows carry a mask.
    assert sum(len(idx) for idx, _ in masks.groups) == int((full != 0).flatten(1).any(1).sum())


@pytest.mark.parametrize("training", [False, True], ids=["sdpa", "explicit"])
def test_window_sdpa_equals_explicit_softmax_with_bias_and_mask(training):
    torch.manual_seed(0)
    size, ws, ss = (4, 16, 16), (2, 8, 8), (1, 4, 4)
    masks = shifted_window_masks(size, ws, ss, torch.device("cpu"))
    batch, heads, n, hd = 2, 3, math.prod(ws), 5
    q, k, v = (torch.randn(batch * masks.num_windows, heads, n, hd, dtype=torch.float64, requires_grad=training)
               for _ in range(3))
    bias = torch.randn(1, heads, n, n, dtype=torch.float64, requires_grad=training)
    assert attention.explicit_attention(q, k, v) == training  # on CPU: explicit products while training
    out = window_sdpa(q, k, v, bias, masks.groups, masks.num_windows)
    full = _full_masks(size, ws, ss).repeat(batch, 1, 1)[:, None]
    ref = _explicit_attention(q, k, v, bias + full, hd ** -0.5)
    torch.testing.assert_close(out, ref)
    if training:
        grad = torch.randn_like(out)
        torch.testing.assert_close(torch.autograd.grad(out, (q, k, v, bias), grad),
                                   torch.autograd.grad(ref, (q, k, v, bias), grad))
    # A custom scale is passed through as VRT's qk_scale.
    out = window_sdpa(q, k, v, bias, masks.groups, masks.num_windows, scale=0.3)
    torch.testing.assert_close(out, _explicit_attention(q, k, v, bias + full, 0.3))


def test_window_sdpa_chunks_huge_batches(monkeypatch):
    torch.manual_seed(4)
    masks = shifted_window_masks((2, 8, 8), (2, 4, 4), (1, 2, 2), torch.device("cpu"))
    q, k, v = (torch.randn(3 * masks.num_windows, 2, 32, 4, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(1, 2, 32, 32, dtype=torch.float64)
    whole = window_sdpa(q, k, v, bias, masks.groups, masks.num_windows)
    monkeypatch.setattr(attention, "MAX_SDPA_BATCH", 5)  # 12 windows -> launches of 5, 5, 2
    torch.testing.assert_close(window_sdpa(q, k, v, bias, masks.groups, masks.num_windows), whole)


def test_explicit_attention_in_row_chunks_equals_one_piece(monkeypatch):
    torch.manual_seed(5)
    masks = shifted_window_masks((2, 8, 8), (2, 4, 4), (1, 2, 2), torch.device("cpu"))
    q, k, v = (torch.randn(3 * masks.num_windows, 2, 32, 4, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    bias = torch.randn(1, 2, 32, 32, dtype=torch.float64, requires_grad=True)
    whole = window_sdpa(q, k, v, bias, masks.groups, masks.num_windows)
    grads = torch.autograd.grad(whole.sum(), (q, k, v, bias))
    monkeypatch.setattr(attention, "EXPLICIT_CHUNK_ELEMENTS", 5 * 2 * 32 * 32)  # 12 windows -> 5, 5, 2 rows
    chunked = window_sdpa(q, k, v, bias, masks.groups, masks.num_windows)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(torch.autograd.grad(chunked.sum(), (q, k, v, bias)), grads)


def _reference_window_attention(attn: WindowAttention, x, full_mask):
    """Official semantics spelled out: self attention with relative position bias, plus mutual attention where
    frame 2's queries attend to frame 1 (placed first) and vice versa, masks restricted to the first frame."""
    b_, n, c = x.shape
    heads, hd = attn.num_heads, c // attn.num_heads
    scale = hd ** -0.5

    def split(t):
        return t.view(b_, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)

    q, k, v = split(attn.qkv_self(x))
    bias = attn.relative_position_bias_table[attn.relative_position_index.flatten()].view(n, n, heads)
    own = _explicit_attention(q, k, v, bias.permute(2, 0, 1)[None] + full_mask[:, None], scale)
    own = own.transpose(1, 2).reshape(b_, n, c)
    q, k, v = split(attn.qkv_mut(x + attn.position_bias.repeat(1, 2, 1)))
    half_mask = full_mask[:, None, :n // 2, :n // 2]
    h = n // 2
    x1 = _explicit_attention(q[..., h:, :], k[..., :h, :], v[..., :h, :], half_mask, scale)
    x2 = _explicit_attention(q[..., :h, :], k[..., h:, :], v[..., h:, :], half_mask, scale)
    mutual = torch.cat((x1, x2), 2).transpose(1, 2).reshape(b_, n, c)
    return attn.proj(torch.cat((mutual, own), 2))


def test_mutual_self_window_attention_equals_reference():
    torch.manual_seed(1)
    size, ws, ss = (4, 8, 16), (2, 4, 4), (1, 2, 2)
    attn = WindowAttention(12, ws, num_heads=3, qkv_bias=True, mut_attn=True).double()
    masks = shifted_window_masks(size, ws, ss, torch.device("cpu"))
    x = torch.randn(2 * masks.num_windows, math.prod(ws), 12, dtype=torch.float64)
    full = _full_masks(size, ws, ss).repeat(2, 1, 1)
    torch.testing.assert_close(attn(x, masks), _reference_window_attention(attn, x, full))
    torch.testing.assert_close(attn(x), _reference_window_attention(attn, x, torch.zeros_like(full)))


def test_relative_position_index_encodes_offsets():
    ws = (2, 3, 4)
    idx = relative_position_index(ws)
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in ws), indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :]
    # Same relative offset <=> same table row; all rows in range; zero offset is the table centre.
    key = (offsets[0] * 100 + offsets[1]) * 100 + offsets[2]
    assert torch.equal(key[:, None, :].eq(key[:, :, None]).sum(), idx[:, None, :].eq(idx[:, :, None]).sum())
    assert idx.min() == 0 and idx.max() == math.prod(2 * w - 1 for w in ws) - 1
    assert torch.all(idx.diagonal() == (math.prod(2 * w - 1 for w in ws) - 1) // 2)


def test_sine_position_encoding_values():
    pe = sine_position_encoding((4, 6), num_pos_feats=8)
    assert pe.shape == (1, 24, 16)
    y, x = 2, 5  # token (row 2, col 5): normalised positions (y + 1) / h, (x + 1) / w of a full turn
    ay, ax = 2 * math.pi * 3 / 4, 2 * math.pi * 6 / 6
    token = pe[0, y * 6 + x]
    freq = 10000 ** (2 * (torch.arange(8) // 2) / 8)
    expect_y = torch.where(torch.arange(8) % 2 == 0, torch.sin(ay / freq), torch.cos(ay / freq))
    expect_x = torch.where(torch.arange(8) % 2 == 0, torch.sin(ax / freq), torch.cos(ax / freq))
    torch.testing.assert_close(token, torch.cat((expect_y, expect_x)).float(), atol=1e-5, rtol=1e-5)


def test_group_pads_time_and_checkpointing_is_exact():
    """T=3 with a 2-frame window pads one zero frame; activation checkpointing changes nothing."""
    torch.manual_seed(2)
    group = TMSAG(8, depth=2, num_heads=2, window_size=(2, 4, 4), mut_attn=True, qkv_bias=True, drop_path=0.2)
    x = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    torch.manual_seed(3)
    out = group(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in group.parameters()]
    x_grad = x.grad.clone()
    for blk in group.blocks:
        blk.use_checkpoint_attn = blk.use_checkpoint_ffn = True
    group.zero_grad()
    x.grad = None
    torch.manual_seed(3)
    out2 = group(x)
    out2.square().sum().backward()
    assert out.shape == x.shape
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x_grad, rtol=0, atol=0)
    for p, g in zip(group.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
