"""A CPU stand-in for the DCNv4 package (a CUDA extension that cannot run here), for tests only: ``DCNv4Function``
computed from DCNv4's definition with differentiable PyTorch ops, so that the code calling the package can be run.

Per output pixel and group ``g``, the packed ``offset_mask`` holds ``2K`` offsets (x, y) for the taps in order
(kernel column outer, row inner) then ``K`` modulation weights; tap (i, j) samples the group's value channels
bilinearly (zero outside the image) at ``x = wo*stride - pad + i*dilation + dx``, ``y = ho*stride - pad +
j*dilation + dy`` (offset_scale 1) and adds them weighted by its modulation weight.
"""
import torch
import torch.nn.functional as F


def _sample(value, x, y):
    """value (N, H, W, D), x/y (N, Ho, Wo) pixel coordinates -> (N, Ho, Wo, D), bilinear, zeros outside."""
    h, w = value.shape[1:3]
    grid = torch.stack((2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1), dim=-1)
    out = F.grid_sample(value.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.permute(0, 2, 3, 1)


class DCNv4Function:
    @staticmethod
    def apply(value, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
              group, group_channels, offset_scale, im2col_step, remove_center):
        assert offset_scale == 1.0 and not remove_center
        n, ho, wo = offset_mask.shape[:3]
        taps = kernel_h * kernel_w
        rows = torch.arange(ho, dtype=value.dtype).view(1, ho, 1) * stride_h - pad_h
        cols = torch.arange(wo, dtype=value.dtype).view(1, 1, wo) * stride_w - pad_w
        out = []
        for g in range(group):
            packed = offset_mask[..., g * taps * 3:(g + 1) * taps * 3]
            chans = value[..., g * group_channels:(g + 1) * group_channels]
            acc = 0
            for tap in range(taps):
                i, j = divmod(tap, kernel_h)
                x = cols + i * dilation_w + packed[..., 2 * tap]
                y = rows + j * dilation_h + packed[..., 2 * tap + 1]
                acc = acc + packed[..., 2 * taps + tap, None] * _sample(chans, x, y)
            out.append(acc)
        return torch.cat(out, dim=-1)
