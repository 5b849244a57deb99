"""The one network of the study: the same architecture for every norm, only the norm differs.

An architecture is a short spec string read left to right, so a reader sees the whole network
on one line and the parameter summary can name every layer:

    16    3x3 convolution to 16 channels, padding 1, then norm and ReLU
    16v   3x3 convolution to 16 channels without padding ("valid"), then norm and ReLU
    16t   1x1 transition convolution to 16 channels, then norm and ReLU
    16s   3x3 convolution to 16 channels with stride 2 (halves the size), then norm and ReLU
    16p   3x3 convolution to 16 channels, padding 1, then 2x2 max pooling, then norm and ReLU:
          the full-resolution convolution of `16 M`, with the norm and ReLU on a quarter of
          the pixels (for BatchNorm with a positive scale the same function; for GroupNorm
          and LayerNorm the statistics come from the pooled map)
    M     2x2 max pooling
    H3    (last token only) the head: average pooling to 3x3, then a 3x3 convolution to the
          classes, i.e. a linear layer over the 3x3 map's values (any Hk up to the last map's
          size); without it the head is H1: global average pooling and a 1x1 convolution
    H7*0.4  the head H7 reading its pooled values multiplied by 0.4 (the readout scale; 1
          without it): a smaller step for a linear read-out of many values (see below)
    RN    (first token only) every block is convolution, ReLU, then norm ("ReLU, norm")
          instead of convolution, norm, ReLU; a `p` block pools right after its convolution

The head pools to a fixed size, so the parameter count does not depend on the input size. H1
throws away where in the image a feature was; Hk keeps a coarse k x k layout of it, which a
linear read-out can use from the first step, before the convolutions have learned anything
(the README measures what that does to GroupNorm and LayerNorm in their first epoch).

Why the readout scale and `RN` exist (our reading of one-off probes; the README has the
measurements): after a per-sample norm every image's features have the same length, and much
of it is a part all images share (the background). A linear read-out of a whole 7x7 map (2,352
values for mnist-h7's 48 channels) moves every image's logits together by about lr x (the
squared length of that shared part) per step, which at SGD's lr 0.1 overshoots: without it,
GroupNorm and LayerNorm ended one epoch of 2,000 images at 20% and 10% on average. Multiplying
what the head reads by s multiplies that step by s^2 (0.16 at 0.4). A norm after the ReLU hands
the next layer and the head normalized values instead of the ReLU's half-zero ones
(docs/results/one-epoch-2000 measures each change left out).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from normlab.core.norms import conv_layer, make_activation, make_norm
from normlab.errors import NormlabError, first_line

# Named specs, chosen for accuracy per FLOP on a CPU.
# mnist-s7 (1x28x28, the default, for issue 13's bar): mnist-h7 behind a stride-2 stem, 28 and 32
#   channels (28,082 parameters; docs/results/mnist-s7): the default study in 2-5 min on 2 cores,
#   each default variant at 99.4%; one epoch of 2,000 images, seed 0: bn 92.3, gn 91.4, ln 91.5%.
# mnist-h7 (1x28x28, the default before, chosen as it learns in a first short epoch with every
#   norm): two pooled convolutions and one at 7x7, each block convolution, ReLU, norm (RN), the
#   whole 7x7 map read at scale 0.4 (42,298 parameters; docs/results/one-epoch-2000, mnist-h7).
# mnist (1x28x28, the default before mnist-h7): pool after one full-resolution convolution,
#   spend the channels at 12x12 and below where they are cheap (18,554 parameters).
# mnist-8k (1x28x28): the same plan in 7,578 parameters, the best global-pooling network of the
#   under-8,000 search (docs/results/mnist-8k); no recipe tried held 99.4% with every norm on it.
# mnist-8k-h3 (1x28x28): mnist-8k with 12 channels last, read by H3 (7,914 parameters): every norm
#   at 99.4% in each of the last 3 epochs with the recipe of the preset `under-8k` (SWA).
# mnist-h3 (1x28x28): mnist read by an H3 head (18,650 parameters): gn and ln learn faster at first,
#   ln and bn+l1 end under 99.4% (docs/results/short-runs-h3, mnist-head).
# cifar (3x32x32): a stride-2 stem to 16x16 (faster than full resolution and pooling, a one-off
#   measurement), then the channels grow at 16x16 and 8x8.
# cifar-50k (3x32x32): the under-50,000 network of the CIFAR-10 search: a pooled stem, RN, an H2
#   head (49,290 parameters); 20 epochs: bn 81.3, gn 80.7 (groups 4), ln 80.2% (cifar10-pool-stem).
ARCHS: dict[str, str] = {
    "mnist-s7": "RN 16s 28p 32 H7*0.4",
    "mnist-h7": "RN 16p 32p 48 H7*0.4",
    "mnist": "16 M 16v 24v M 24 32",
    "mnist-8k": "8 M 12v 16v M 16 16",
    "mnist-8k-h3": "8 M 12v 16v M 16 12 H3",
    "mnist-h3": "16 M 16v 24v M 24 24 H3",
    "cifar": "32s 32 M 48 48 48t",
    "cifar-50k": "RN 32p 32 M 48 48 48t H2",
}
ARCH_BY_SHAPE: dict[tuple[int, int], str] = {(28, 28): "mnist-s7", (32, 32): "cifar"}
# One convolution token: a width, then an optional kind; anything else ('-4', '16vs') is refused.
CONV_TOKEN = re.compile(r"(\d+)([vtsp]?)")
HEAD_TOKEN = re.compile(r"H(\d+)(?:\*(\d*\.?\d+))?")  # Hk, optionally *s (a readout scale)
RELU_FIRST = "RN"  # a leading token: every block is convolution, ReLU, norm
MAX_HEAD = 64  # no map the built-in datasets give is larger; a typo like H5000 is refused


def choose_arch(input_shape: tuple[int, int, int], model: str = "auto") -> str:
    """The spec for an input shape: `model` when given (a name in ARCHS or a spec string),
    else the named spec for that image size (channels do not matter: only the first layer
    depends on them), else the cifar spec behind enough stride-2 convolutions to bring the
    image to 32 pixels or less."""
    if model != "auto":
        return ARCHS.get(model, model)
    _, h, w = input_shape
    if (h, w) in ARCH_BY_SHAPE:
        return ARCHS[ARCH_BY_SHAPE[(h, w)]]
    if min(h, w) < 16:
        raise NormlabError(
            f"no built-in network for {h}x{w} images (smaller than 16x16); pass --model with a "
            "spec, e.g. --model '32 32 M 64'"
        )
    stem = []
    while min(h, w) > 32:
        stem.append("16s")
        h, w = (h + 1) // 2, (w + 1) // 2
    return " ".join([*stem, ARCHS["cifar"]])


@dataclass(frozen=True)
class Spec:
    """A spec string read: the layers before the head (`(width, kind)` per convolution, `"M"`
    per pooling), the head's pooled size k and readout scale, and the block order."""

    layers: tuple[tuple[int, str] | str, ...]
    head: int = 1
    scale: float = 1.0
    relu_first: bool = False


def parse_head(token: str, arch: str) -> tuple[int, float]:
    """The pooled size k and readout scale s of a head token `Hk` or `Hk*s`."""
    match = HEAD_TOKEN.fullmatch(token)
    if match is None or not 1 <= int(match[1]) <= MAX_HEAD or float(match[2] or 1) <= 0:
        raise NormlabError(
            f"bad head {token!r} in {arch!r}; use H1 to H{MAX_HEAD} (no larger than the last "
            "map), optionally times a positive readout scale, e.g. H3 or H7*0.4"
        )
    return int(match[1]), float(match[2] or 1)


def parse_arch(arch: str) -> Spec:
    """The spec string read into its parts. The study configuration calls this to refuse a
    misspelt --model before anything runs."""
    tokens = arch.split()
    relu_first = bool(tokens) and tokens[0] == RELU_FIRST
    if relu_first:
        tokens = tokens[1:]
    head, scale = 1, 1.0
    if tokens and tokens[-1].startswith("H"):
        head, scale = parse_head(tokens.pop(), arch)
    layers: list[tuple[int, str] | str] = []
    for token in tokens:
        match = CONV_TOKEN.fullmatch(token)
        if token != "M" and (match is None or int(match[1]) < 1):
            raise NormlabError(
                f"bad architecture token {token!r} in {arch!r}; use a width of at least 1 "
                "with an optional kind, e.g. '16', '16v', '16t', '16s', '16p', or 'M', "
                "optionally a head 'Hk' last, e.g. 'H3', and 'RN' first"
            )
        layers.append("M" if token == "M" else (int(match[1]), match[2]))
    if not any(isinstance(layer, tuple) for layer in layers):
        raise NormlabError(
            f"the network {arch!r} has no convolution, so no norm to compare; give at least one "
            "width, e.g. '16 M 32 H3'"
        )
    return Spec(tuple(layers), head, scale, relu_first)


@dataclass(frozen=True)
class LayerInfo:
    """One row of the parameter summary."""

    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int


class MaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d(2)` whose CPU forward without autograd (the test pass) is the elementwise
    maximum of four strided views.

    PyTorch's CPU max-pool kernel always computes the argmax indices, and on contiguous input
    it is slow enough to take half of an evaluation pass; the maximum of the views gives
    exactly the same values (NaN included) in a fraction of the time. With autograd on, the
    native kernel runs, so training's gradients (ties go to the first maximum) are unchanged;
    so does a map smaller than 2x2, where it raises as it does in training.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiny = x.shape[-2] < 2 or x.shape[-1] < 2
        if tiny or x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
            return super().forward(x)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # floor, as max_pool2d
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class HeadPool(nn.Module):
    """Average pooling to `size` x `size` ahead of the head: the mean over H and W for 1 (the
    global average pooling every network had before the head token), adaptive average pooling
    otherwise; then times the readout `scale`, if not 1. A module, not a step of `forward`, so
    the parameter summary shows it."""

    def __init__(self, size: int, scale: float = 1.0) -> None:
        super().__init__()
        self.size, self.scale = size, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            x = x.mean(dim=(2, 3), keepdim=True)
        elif x.shape[-2:] != (self.size, self.size):  # a map already k x k is its own average
            x = F.adaptive_avg_pool2d(x, self.size)
        return x if self.scale == 1 else x * self.scale

    def extra_repr(self) -> str:
        return f"size={self.size}" + (f", scale={self.scale}" if self.scale != 1 else "")


class Net(nn.Module):
    """Convolution blocks, max pooling, and a head that average-pools the last map to k x k
    (`Hk`, default H1) and reads it with one convolution; `norm` picks the norm. A block is
    convolution, norm, ReLU, or with `RN` convolution, ReLU, norm."""

    def __init__(
        self,
        norm: str = "bn",
        in_channels: int = 1,
        num_classes: int = 10,
        groups: int | None = None,
        arch: str = ARCHS["mnist"],
    ) -> None:
        super().__init__()
        self.norm, self.arch = norm, arch
        layers: list[nn.Module] = []
        channels = in_channels
        conv = conv_layer(norm)
        spec = parse_arch(arch)
        # Where each block's norm sits in `features` (after the ReLU with RN): what
        # `core.activations.norm_layers` measures, whatever the block order.
        self.norm_positions: list[int] = []
        for token in spec.layers:
            if token == "M":
                layers.append(MaxPool2d())
                continue
            out, kind = token
            size, pad = (1, 0) if kind == "t" else (3, 0 if kind == "v" else 1)
            norm_layer = make_norm(norm, out, groups)
            norm_relu = [norm_layer, make_activation(norm)]
            block = [
                # A bias only without a norm, which subtracts it again. With RN the norm comes
                # after the ReLU, where a bias would not be redundant; RN networks train without.
                conv(
                    channels,
                    out,
                    size,
                    stride=2 if kind == "s" else 1,
                    padding=pad,
                    bias=norm == "none",
                ),
                *([MaxPool2d()] if kind == "p" else []),
                *(norm_relu[::-1] if spec.relu_first else norm_relu),
            ]
            self.norm_positions.append(len(layers) + block.index(norm_layer))
            layers += block
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = HeadPool(spec.head, spec.scale)
        self.head = nn.Conv2d(channels, num_classes, self.pool.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x))).flatten(1)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_summary(model: Net, input_shape: tuple[int, int, int]) -> list[LayerInfo]:
    """Per-layer output shape and parameter count, found by tracing one dummy input."""
    rows: list[LayerInfo] = []
    hooks = []
    named = [*model.features.named_children(), ("pool", model.pool), ("head", model.head)]
    for name, module in named:

        def record(mod: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
            n = sum(p.numel() for p in mod.parameters())
            rows.append(LayerInfo(name, type(mod).__name__, tuple(out.shape[1:]), n))

        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return rows


# The layers that take an unbiased variance over the batch when training: of one value per
# channel it is 0/0, and each raises mid-training (EvoNorm-B0 a ZeroDivisionError).
BATCH_LAYERS = ("BatchNorm2d", "BatchRenorm2d", "EvoNorm2dB0")


def check_network(
    model: str,
    input_shape: tuple[int, int, int] | None,
    norms: Iterable[str],
    groups: int | None,
    batch: int = 2,
) -> None:
    """Build the network for each norm and push one dummy image of `input_shape` through it,
    so a spec that does not fit the images (pooled below 1x1, a head larger than the last map,
    a group count that does not divide a width) fails before the data loads or the first run
    starts, not mid-study.
    `batch` is the fewest images a training statistic spans (a batch, or the smallest ghost
    batch: `config.smallest_group`): BatchNorm refuses to train on one value per channel, i.e.
    one image reaching a 1x1 map.

    `input_shape` is None for an image folder that has not been loaded yet: nothing to check
    then (the study checks again with the loaded shape). The global random state is left as
    it was: this is validation, not a run."""
    if input_shape is None:
        return
    arch = choose_arch(input_shape, model)
    shape = "x".join(map(str, input_shape))
    with torch.random.fork_rng(devices=[]):
        for norm in dict.fromkeys(norms):
            net = Net(norm, input_shape[0], groups=groups, arch=arch)
            try:
                rows = layer_summary(net, input_shape)
            except RuntimeError as exc:  # e.g. pooling or a 3x3 valid convolution on a 1x1 map
                raise NormlabError(
                    f"the network {arch!r} does not fit {shape} images "
                    f"({first_line(exc, 'no detail')}); "
                    "pass a --model spec with fewer 'M' or stride-2 layers"
                ) from None
            h, w = rows[-3].out_shape[1:]  # the last map, before the head's pooling
            k = net.pool.size
            if k > min(h, w):
                raise NormlabError(
                    f"the head H{k} of {arch!r} would stretch the last map "
                    f"({h}x{w} on {shape} images) to {k}x{k}; "
                    f"use H{min(h, w)} or less"
                )
            single = [r for r in rows if r.kind in BATCH_LAYERS and r.out_shape[1:] == (1, 1)]
            if single and batch < 2:
                raise NormlabError(
                    f"{single[0].kind} layer {single[0].name} of {arch!r} would normalize one "
                    "value per channel (a batch or ghost batch of one image at 1x1); train on "
                    "batches and ghost batches of at least 2 (--batch-size, --norm-batch, "
                    "--limit-train) or use a --model with larger maps"
                )
