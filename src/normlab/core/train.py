"""One training run: a fresh model from its seed, SGD + OneCycle, L1/L2, per-epoch metrics.

Read it top to bottom like pytorch/examples' mnist/main.py: the model and the optimizer, then
`make_context` (one run's fixed parts), `train_step` and `train_epoch`, the test pass, and last
`train_run`, which alternates training and test epochs and checkpoints between them, and ends
with what BatchNorm's running statistics cost (`evaluation`, which also holds `evaluate`).
Nothing in the loop copies to the host per step: the loss and correct counts are summed on the
device and read once per epoch, as are the norm layers' activation statistics that
`--activation-stats` measures at a few steps per epoch (`activations`). `normlab bench` builds
its runs with the same `make_context` and `train_step`, so it times the code that trains.

Regularizers act on the convolution weights only (the `weight` of every Conv2d, head included):
L1 adds `l1 * sum|w|` to the loss, L2 is SGD weight decay on the same tensors. Norm scales and
shifts and biases are left alone: penalizing BatchNorm's gamma would prune channels through the
norm itself (network slimming), which would confound a comparison *between* norms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from normlab.config import TrainOptions, Variant
from normlab.core import average as swa
from normlab.core.activations import ActivationProbe
from normlab.core.augment import augment_for, parse_augment, prepare_batch
from normlab.core.checkpoint import load_checkpoint, save_checkpoint
from normlab.core.device import MEMORY_FORMAT, eval_batch_size, use_bf16
from normlab.core.evaluation import evaluate, settle_batch_norm, statistics_gap
from normlab.core.ghost import set_norm_batch
from normlab.core.models import Net, choose_arch, count_params
from normlab.core.records import EpochMetrics, RunResult
from normlab.data import Dataset, batches, steps_per_epoch
from normlab.validation import MOMENTUM_SWING, WARM_UP


def build_model(variant: Variant, dataset: Dataset, opts: TrainOptions, seed: int) -> Net:
    """A fresh model whose initial weights depend only on `seed`, its batch-dependent norms
    taking statistics over `opts.norm_batch` images. The weights are drawn from the CPU
    generator seeded inside `fork_rng`, so the caller's global random state (a notebook user's)
    is the same afterwards as before."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = Net(
            norm=variant.norm,
            in_channels=dataset.input_shape[0],
            num_classes=len(dataset.classes),
            groups=opts.groups,
            arch=choose_arch(dataset.input_shape, opts.model),
        )
    set_norm_batch(model, opts.norm_batch)
    return model


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """The module to call for forward passes: `torch.compile(model)` when enabled, else the
    model itself. Parameters are shared, so the optimizer and `state_dict` keep using `model`
    (a compiled module's state_dict keys carry an `_orig_mod.` prefix)."""
    return torch.compile(model) if enabled else model


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    """The tensors L1 and L2 act on (see the module docstring for why only these)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """`strength * sum|w|` over the convolution weights: the L1 term of the training loss.
    Training adds its gradient directly (`add_l1_grad`); this is the term's definition."""
    return strength * torch.stack([w.abs().sum() for w in conv_weights(model)]).sum()


def add_l1_grad(model: nn.Module, strength: float) -> None:
    """Add the gradient of `l1_penalty(model, strength)` to the conv weights' `.grad`.

    That gradient is `strength * sign(w)` (0 at w = 0, as autograd's |w| gives), so it is added
    after `backward` instead of building the penalty into the loss: the same update, without a
    dozen small autograd nodes per step. The reported loss never included the penalty.
    """
    weights = [w for w in conv_weights(model) if w.grad is not None]
    torch._foreach_add_([w.grad for w in weights], torch._foreach_sign(weights), alpha=strength)


def make_optimizer(
    model: nn.Module, variant: Variant, opts: TrainOptions, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with Nesterov momentum and a OneCycle schedule; weight decay = the variant's L2.

    OneCycle moves the momentum against the learning rate: from `opts.momentum` +
    `MOMENTUM_SWING` at the start, down to `opts.momentum` - `MOMENTUM_SWING` at the peak lr, and
    back (0.95 to 0.85 for the default 0.9: OneCycleLR's own defaults, so every stored study
    trains as before). Momentum 0 is plain SGD: no Nesterov and no cycling.

    The lr rises to its peak and falls from it along straight lines by default; `anneal: cos`
    (OneCycleLR's own default) makes both ramps half cosines, which stay longer near the peak
    and enter the last three of 20 epochs at about 10% of it (the line: 20%), meant to bring
    the accuracies of those epochs closer to the final one."""
    decayed = {id(w) for w in conv_weights(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in decayed], "weight_decay": variant.l2},
        {"params": [p for p in model.parameters() if id(p) not in decayed], "weight_decay": 0.0},
    ]
    opt = torch.optim.SGD(groups, lr=opts.lr, momentum=opts.momentum, nesterov=opts.momentum > 0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=opts.lr,
        total_steps=total_steps,
        # OneCycleLR divides by pct_start * total_steps - 1, which is zero for 0.25 x 4 steps
        # (one epoch of a 512-image subset): nudge the warm-up there, keep it everywhere else.
        pct_start=WARM_UP if total_steps != 4 else 0.3,
        anneal_strategy=opts.anneal,
        div_factor=10,
        final_div_factor=100,
        **momentum_cycle(opts.momentum),
    )
    return opt, sched


def momentum_cycle(momentum: float) -> dict:
    """OneCycleLR's momentum arguments for `momentum` (see `make_optimizer`): no cycle for 0.
    Rounding keeps 0.9 + 0.05 the float 0.95 that OneCycleLR's own default is."""
    if momentum == 0:
        return {"cycle_momentum": False}
    return {
        "base_momentum": round(momentum - MOMENTUM_SWING, 10),
        "max_momentum": round(momentum + MOMENTUM_SWING, 10),
    }


def augmentation_for(dataset: Dataset, opts: TrainOptions) -> tuple[str, ...]:
    """The augmentation steps to use (`auto` means the dataset's default), parsed once per
    run rather than per batch."""
    return parse_augment(augment_for(dataset, opts.augment)[0])


SHORT_EPOCH = 100  # optimizer steps; below this an epoch ends with `settle_batch_norm`


@dataclass(frozen=True)
class RunContext:
    """What one run holds fixed while it loops: the model (`net` is what forward passes call, see
    `compiled`), its optimizer and schedule, the generator that shuffles and augments, the device
    policies (the memory format is `device.MEMORY_FORMAT`, the same for every run), and the probe of
    the norm layers' statistics (recording only with `activation_stats`). One builder
    (`make_context`) makes it for training and for `normlab bench`, so the benchmark times exactly
    what a run does."""

    variant: Variant
    opts: TrainOptions
    model: Net
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    bf16: bool
    augment: tuple[str, ...]
    device: torch.device
    eval_batch: int
    probe: ActivationProbe
    average: swa.WeightAverage | None  # SWA's average of the weights, when on
    swa_from: int  # optimizer steps before averaging begins


def make_context(
    variant: Variant,
    seed: int,
    data: Dataset,
    opts: TrainOptions,
    device: torch.device,
    total_steps: int,
) -> RunContext:
    """A fresh run: the model from `seed` on `device` in its memory format, an optimizer whose
    schedule spans `total_steps`, and a generator seeded with `seed`. None of these draws from
    shared random state, so the order they are built in cannot change a result."""
    model = build_model(variant, data, opts, seed).to(device, memory_format=MEMORY_FORMAT)
    opt, sched = make_optimizer(model, variant, opts, total_steps)
    return RunContext(
        variant=variant,
        opts=opts,
        model=model,
        net=compiled(model, opts.compile),
        opt=opt,
        sched=sched,
        generator=torch.Generator(device=device).manual_seed(seed),
        bf16=use_bf16(device, opts.precision),
        augment=augmentation_for(data, opts),
        device=device,
        eval_batch=eval_batch_size(device, opts.eval_batch_size, data.input_shape),
        probe=ActivationProbe(model, enabled=opts.activation_stats),
        average=swa.make_average(model, opts),
        swa_from=swa.averaging_starts(opts, steps_per_epoch(len(data.train), opts.batch_size)),
    )


def train_step(
    ctx: RunContext, x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a prepared batch; returns (loss, logits), still on the device.

    The loss is taken on float logits whatever the autocast precision, so bf16 rounds the
    network's arithmetic but not the softmax. The L1 gradient goes in between `backward` and
    the step (see `add_l1_grad`); the schedule advances once per batch (in SWA's epochs the
    average takes the new weights instead: `average.advance`)."""
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.bf16):
        logits = ctx.net(x)
    loss = F.cross_entropy(logits.float(), labels)
    ctx.opt.zero_grad(set_to_none=True)
    loss.backward()
    if ctx.variant.l1:
        add_l1_grad(ctx.model, ctx.variant.l1)
    ctx.opt.step()
    swa.advance(ctx)
    return loss, logits


def train_epoch(
    ctx: RunContext, data: Dataset, on_step: Callable[[], None] | None = None
) -> tuple[float, float]:
    """One pass over the shuffled training split of `data`; returns (mean loss, accuracy %).
    `data` is an argument, not part of `ctx`, so that the bench can warm up on a subset."""
    ctx.net.train()
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    seen = 0
    ctx.probe.begin(steps_per_epoch(len(data.train), ctx.opts.batch_size), swa.steps_done(ctx))
    batched = batches(data.train, ctx.opts.batch_size, ctx.generator)
    for step, (images, labels) in enumerate(batched):
        x = prepare_batch(images, data.mean, data.std, ctx.generator, ctx.augment)
        with ctx.probe.at(step):
            loss, logits = train_step(ctx, x.contiguous(memory_format=MEMORY_FORMAT), labels)
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if on_step is not None:
            on_step()
    ctx.probe.end()
    return loss_sum.item() / seen, 100.0 * correct.item() / seen


def test_pass(ctx: RunContext, data: Dataset) -> tuple[float, float, dict[str, torch.Tensor]]:
    """`evaluate` on the test split with the run's network (or SWA's average of it, see
    `average.tested_network`), precision and batch size."""
    net = swa.tested_network(ctx, data)
    return evaluate(net, data.test, data, ctx.eval_batch, ctx.bf16, MEMORY_FORMAT)


def training_state(ctx: RunContext, metrics: list[EpochMetrics]) -> dict:
    """What a checkpoint holds: all that the next epoch depends on, and the metrics so far."""
    return {
        "model": ctx.model.state_dict(),
        "optimizer": ctx.opt.state_dict(),
        "scheduler": ctx.sched.state_dict(),
        "generator": ctx.generator.get_state(),
        "metrics": [asdict(x) for x in metrics],
        "activations": ctx.probe.state(),
        "average": None if ctx.average is None else ctx.average.state_dict(),
    }


def resume(ctx: RunContext, checkpoint: Path) -> list[EpochMetrics]:
    """Put a checkpoint's state back into a fresh `ctx`; returns the epochs it had finished.
    (`Generator.set_state` takes a CPU tensor, whatever the generator's device.)"""
    state = load_checkpoint(checkpoint, ctx.device)
    ctx.model.load_state_dict(state["model"])
    ctx.opt.load_state_dict(state["optimizer"])
    ctx.sched.load_state_dict(state["scheduler"])
    ctx.generator.set_state(state["generator"].cpu())
    ctx.probe.load(state.get("activations"))
    if ctx.average is not None:
        ctx.average.load_state_dict(state["average"])
    return [EpochMetrics(**m) for m in state["metrics"]]


def fit_epoch(
    ctx: RunContext, data: Dataset, epoch: int, on_step: Callable[[], None] | None
) -> tuple[EpochMetrics | None, dict[str, torch.Tensor]]:
    """Train one epoch, then test; returns its metrics and test predictions, or (None, {}) as
    soon as a loss is non-finite: the run has diverged and nothing after that is worth
    computing. `lr` is the rate the epoch started with; `seconds` counts training and test."""
    start = time.perf_counter()
    lr = ctx.opt.param_groups[0]["lr"]
    train_loss, train_acc = train_epoch(ctx, data, on_step)
    if not math.isfinite(train_loss):
        return None, {}
    if steps_per_epoch(len(data.train), ctx.opts.batch_size) < SHORT_EPOCH:
        settle_batch_norm(ctx, data)
    test_loss, test_acc, predictions = test_pass(ctx, data)
    if not math.isfinite(test_loss):  # e.g. BatchNorm's running variance overflowed
        return None, {}
    seconds = time.perf_counter() - start
    return EpochMetrics(epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds), predictions


def train_run(
    variant: Variant,
    seed: int,
    data: Dataset,
    opts: TrainOptions,
    device: torch.device,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    checkpoint: Path | None = None,
) -> RunResult:
    """Train one variant with one seed; `data` must already be on `device`.

    With `checkpoint`, the full training state (model, optimizer, schedule, random generator,
    metrics so far) is written atomically after every epoch, and a run finds its checkpoint
    and continues from it, with the same result as if it had never stopped.

    A run whose loss turns non-finite stops there as "diverged" with the metrics of its last
    good epoch and no state_dict or predictions: the weights are NaN by then, and predictions
    of an earlier epoch next to them would describe a model that is not stored. A finished run
    with batch-dependent norms ends by measuring what their running statistics cost
    (`evaluation.statistics_gap`), which leaves the model as it was.
    """
    total_steps = opts.epochs * steps_per_epoch(len(data.train), opts.batch_size)
    ctx = make_context(variant, seed, data, opts, device, total_steps)
    metrics = resume(ctx, checkpoint) if checkpoint is not None and checkpoint.exists() else []
    result = RunResult(variant, seed, count_params(ctx.model), metrics, {})
    for epoch in range(len(metrics) + 1, opts.epochs + 1):
        m, predictions = fit_epoch(ctx, data, epoch, on_step)
        if m is None:
            result.status, result.diverged_epoch = "diverged", epoch
            result.activations = ctx.probe.result()  # up to the divergence: what blew up
            result.predictions = {}  # an earlier epoch's would not describe the NaN model
            return result
        result.predictions = predictions
        metrics.append(m)
        if checkpoint is not None:
            save_checkpoint(training_state(ctx, metrics), checkpoint)
        if on_epoch is not None:
            on_epoch(m)
    if not result.predictions:  # resumed from a checkpoint of the last epoch
        _, _, result.predictions = test_pass(ctx, data)
    swa.adopt_average(ctx)
    result.statistics_gap = statistics_gap(ctx, data, metrics[-1].test_acc)
    result.state_dict = {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()}
    result.activations = ctx.probe.result()
    return result
