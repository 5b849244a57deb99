"""Batch-at-a-time preprocessing on the device: scale, augment, normalize.

Each function takes a whole batch, so the cost is a few tensor ops per batch instead of Python
work per image. Random numbers come from an explicit generator, which makes runs reproducible
and lets a checkpoint store the exact augmentation stream.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, [b, c, h, w], align_corners=False)`, written out.

    PyTorch builds that grid with a batched matmul of a (h*w, 3) base grid by the 3x2 matrices,
    which on a CPU costs twice the `grid_sample` it feeds. Each coordinate plane is instead one
    broadcast multiply-add over the pixel centres, written into the interleaved (x, y) grid in
    place (`torch.stack` into a last dimension of 2 is itself slow on a CPU).
    """
    xs = ((torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1).view(1, 1, w)
    ys = ((torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1).view(1, h, 1)
    grid = theta.new_empty(theta.shape[0], h, w, 2)
    for i in (0, 1):
        t = theta[:, i, :, None, None]  # (b, 3, 1, 1): each coefficient broadcasts over pixels
        grid[..., i] = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    return grid


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 7.0,
    translate: float = 2.0,
    scale: float = 0.05,
) -> torch.Tensor:
    """Rotate by up to +-`degrees`, shift by up to +-`translate` pixels and zoom by up to
    +-`scale`, independently per image, in one `grid_sample` over the batch.

    Apply it to images on the [0, 1] scale (before normalizing), so the border it fills with
    zeros is the digits' black background.
    """
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=generator, device=x.device) * 2 - 1
    angle = u[:, 0] * math.radians(degrees)
    zoom = 1 + u[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos, -sin, u[:, 2] * translate * 2 / w], 1),
            torch.stack([sin, cos, u[:, 3] * translate * 2 / h], 1),
        ],
        1,
    )
    grid = affine_grid(theta, h, w)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def prepare_batch(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator | None = None,
    augment: str = "none",
) -> torch.Tensor:
    """uint8 batch -> the network's input: augmented (when a generator is given) and normalized."""
    x = images.float().div_(255)
    if generator is not None and augment == "digits":
        x = random_affine(x, generator)
    return (x - channel_values(mean, x.device)).div_(channel_values(std, x.device))


@functools.lru_cache(maxsize=16)
def channel_values(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Per-channel constants as a (1, C, 1, 1) tensor on `device`, made once: building them
    per batch would copy from pageable host memory every step, which on a GPU waits for all
    the work queued before it (a host sync per step)."""
    return torch.tensor(values, device=device).view(1, -1, 1, 1)
