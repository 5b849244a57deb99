"""Batch-at-a-time preprocessing on the device: scale, augment, normalize.

Each function takes a whole batch, so the cost is a few tensor ops per batch instead of Python
work per image. Random numbers come from an explicit generator, which makes runs reproducible
and lets a checkpoint store the exact augmentation stream.

An augmentation is written as `+`-joined steps, applied in this order:

    digits   small random rotation, shift and zoom (handwriting varies like that; no flips)
    crop     random crop of the image padded by 4 pixels (reflected), i.e. shifts of up to 4
    flip     horizontal flip of half the images
    cutout   one random 8x8 square per image set to the mean (after normalizing)

`none` turns it off. The default (`auto`, see `auto_augment`) never changes a label: MNIST gets
`digits` (a flipped 2 or 7 is not a digit); flips only where a mirrored image is known to be the
same class, CIFAR-10 and Fashion-MNIST (by name; an image folder of CIFAR-10, such as its JPEG
copy, by its class names); any other image folder gets `crop` alone, since a mirrored letter,
digit, sign or X-ray may be another class. A folder can declare its own default in a
`normlab.yaml` beside train/ and test/ (`augment: crop+flip`). Cutout is left out by default: the
study's networks are small (under 50,000 parameters) and barely overfit in 20 epochs (the
CIFAR-10 run in docs/results/cifar10 ends with train and test accuracy within about a point), so
stronger regularization has little to do.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from normlab.data import Dataset
from normlab.errors import NormlabError

AUGMENT_STEPS = ("digits", "crop", "flip", "cutout")
CIFAR10_CLASSES = (
    *("airplane", "automobile", "bird", "cat", "deer"),
    *("dog", "frog", "horse", "ship", "truck"),
)
MIRROR_SAFE = ("cifar10", "fashion-mnist")  # datasets whose classes survive a horizontal flip


def auto_augment(data: Dataset) -> tuple[str, str]:
    """What `--augment auto` means for `data`, and why (the study stores and reports both).
    An image folder of CIFAR-10 (such as its JPEG copy) is recognised by its class names."""
    if data.augment is not None:
        try:
            steps = parse_augment(data.augment)
        except NormlabError:
            raise NormlabError(
                f"the normlab.yaml of {data.name} sets augment: {data.augment!r}; write steps "
                f"joined by '+' from {', '.join(AUGMENT_STEPS)} (e.g. crop+flip), or none"
            ) from None
        return "+".join(steps) or "none", "declared in the dataset folder's normlab.yaml"
    if data.name == "mnist":
        return "digits", "handwritten digits: small rotations, shifts and zooms, no flips"
    if data.name in MIRROR_SAFE or {c.lower() for c in data.classes} == set(CIFAR10_CLASSES):
        return "crop+flip", "shifts and flips: a mirrored image of these classes is the same class"
    return "crop", (
        "shifts only: a mirrored letter, digit or sign may be another class; "
        "--augment crop+flip if this folder's classes are mirror-safe"
    )


def augment_for(data: Dataset, augment: str) -> tuple[str, str]:
    """The augmentation a run uses (`auto` resolved for `data`) and why."""
    if augment == "auto":
        return auto_augment(data)
    return augment, "as asked (--augment, or augment: in the study file)"


def parse_augment(text: str) -> tuple[str, ...]:
    """`crop+flip` -> ("crop", "flip"); `none` -> (); anything else is a user error."""
    if not isinstance(text, str):
        raise NormlabError(f"--augment must be text such as crop+flip, got {text!r}")
    steps = tuple(t.strip() for t in text.lower().split("+"))
    if steps == ("none",):
        return ()
    bad = [t for t in steps if t not in AUGMENT_STEPS]
    if bad:
        raise NormlabError(
            f"--augment {text!r}: unknown step {bad[0]!r}; join steps from "
            f"{', '.join(AUGMENT_STEPS)} with '+' (e.g. crop+flip), or use none or auto"
        )
    return steps


@functools.lru_cache(maxsize=16)
def pixel_centres(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The centres of `n` pixels on [-1, 1] (align_corners=False), made once per size (as
    ordinary tensors even when first asked for under inference mode)."""
    with torch.inference_mode(False):
        return (torch.arange(n, device=device, dtype=dtype) * 2 + 1) / n - 1


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`F.affine_grid(theta, [b, c, h, w], align_corners=False)`, written out.

    PyTorch builds that grid with a batched matmul of a (h*w, 3) base grid by the 3x2 matrices,
    which on a CPU costs three times the `grid_sample` it feeds. Each coordinate plane is
    instead a broadcast multiply-add over the pixel centres, whose last add writes straight
    into the interleaved (x, y) grid (`torch.stack` into a last dimension of 2 is itself slow
    on a CPU). Unlike `F.affine_grid` it is not differentiable in `theta` (an `out=` write):
    augmentation never needs that.
    """
    xs = pixel_centres(w, theta.device, theta.dtype).view(1, 1, w)
    ys = pixel_centres(h, theta.device, theta.dtype).view(1, h, 1)
    grid = theta.new_empty(theta.shape[0], h, w, 2)
    for i in (0, 1):
        t = theta[:, i, :, None, None]  # (b, 3, 1, 1): each coefficient broadcasts over pixels
        torch.add(t[:, 0] * xs + t[:, 1] * ys, t[:, 2], out=grid[..., i])
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
    shift_x, shift_y = u[:, 2] * translate * 2 / w, u[:, 3] * translate * 2 / h
    theta = torch.stack([cos, -sin, shift_x, sin, cos, shift_y], 1).view(b, 2, 3)
    grid = affine_grid(theta, h, w)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Shift each image by up to `pad` pixels in each direction: pad by reflection (borders of
    natural images continue their content, unlike a black frame) and crop back at a random
    offset, by one `gather` over the flattened pixels (advanced indexing with four index
    tensors is about 5x slower on a CPU)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=x.device)
    rows = off[0].view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = off[1].view(b, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    index = (rows * (w + 2 * pad) + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: torch.Tensor, generator: torch.Generator, size: int = 8) -> torch.Tensor:
    """Zero one `size` x `size` square per image (centre anywhere, so it may be clipped).
    Applied after normalizing, zero is the mean colour."""
    b, _, h, w = x.shape
    centre = torch.rand(2, b, 1, generator=generator, device=x.device)
    top, left = (centre[0] * h).long() - size // 2, (centre[1] * w).long() - size // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_y, in_x = (ys >= top) & (ys < top + size), (xs >= left) & (xs < left + size)
    hole = in_y.view(b, 1, h, 1) & in_x.view(b, 1, 1, w)
    return x.masked_fill(hole, 0.0)


def prepare_batch(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator | None = None,
    augment: tuple[str, ...] = (),
) -> torch.Tensor:
    """uint8 batch -> the network's input: augmented (when a generator is given) and normalized.
    `augment` is already parsed (`parse_augment`): this runs once per batch."""
    x = images.float().div_(255)
    steps = augment if generator is not None else ()
    if "digits" in steps:
        x = random_affine(x, generator)
    if "crop" in steps:
        x = random_crop(x, generator)
    if "flip" in steps:
        x = random_flip(x, generator)
    x = (x - channel_values(mean, x.device)).div_(channel_values(std, x.device))
    return cutout(x, generator) if "cutout" in steps else x


@functools.lru_cache(maxsize=16)
def channel_values(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Per-channel constants as a (1, C, 1, 1) tensor on `device`, made once: building them
    per batch would copy from pageable host memory every step, which on a GPU waits for all
    the work queued before it (a host sync per step)."""
    return torch.tensor(values, device=device).view(1, -1, 1, 1)
