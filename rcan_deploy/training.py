"""Train or fine-tune a registered RCAN variant on an image set (CPU, or CUDA when present).

Recipe: random HR patches with their MATLAB-bicubic LR patches, flips and 90-degree rotations,
L1 loss on the network's native value range, Adam, cosine (or step) learning-rate schedule,
seeded. Validation PSNR (standard protocol: Y channel, border = scale) on held-out images every
``val_every`` steps, against MATLAB bicubic. The checkpoint is written in the source's own format
(official: plain state_dict; BasicSR: ``{'params': ...}``); ``<out>.state.pt`` holds the
optimizer, schedule, step and random states for ``resume``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from .archs import build_model, get_source, variant_config
from . import defaults
from .artifacts import atomic_path, check_destination
from .data.datasets import Dataset
from .data.imresize import imresize
from .data.io import to_uint8
from .errors import UserError
from .metrics import psnr, ssim
from .defaults import progress_off
from .record import Record, publish

if TYPE_CHECKING:
    import torch
    from torch import nn

SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class TrainOptions:
    """Training recipe (recorded in the model card)."""

    steps: int = 3000
    batch_size: int = 16
    patch_size: int = 48  # LR pixels
    learning_rate: float = 5e-4
    schedule: str = "cosine"
    step_every: int = 1000  # step schedule: halve the rate every this many steps
    val_every: int = 500
    seed: int = 0

    def check(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise UserError(f"--learning-rate {self.learning_rate}: expected a positive number")
        for flag, value, low in (("--steps", self.steps, 1), ("--batch-size", self.batch_size, 1),
                                 ("--patch-size", self.patch_size, 8),
                                 ("--val-every", self.val_every, 1),
                                 ("step_every", self.step_every, 1), ("--seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{flag} {value!r}: expected an integer >= {low}")
        if self.seed >= 2**32:
            raise UserError(f"--seed {self.seed}: expected an integer below 2**32")


@dataclass(frozen=True)
class TrainJob:
    """What to train and on what: layout and variant of the checkpoint to write, the training
    and validation sets, an optional checkpoint to fine-tune, whether to resume."""

    source: str = "official"
    variant: str = defaults.VARIANT
    scale: int = defaults.SCALE
    dataset: str = "samples"
    val_dataset: str | None = None  # default: the samples held-out split
    data_root: str | None = None
    weights: str | None = None
    resume: bool = False


@dataclass
class TrainState:
    step: int
    optimizer: dict
    scheduler: dict
    history: list


def _lr_lambda(options: TrainOptions):
    if options.schedule == "step":
        return lambda step: 0.5 ** (step // options.step_every)
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, options.steps) / options.steps))


def _patches(images: list[tuple[np.ndarray, np.ndarray]], options: TrainOptions, scale: int,
             rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of aligned (LR, HR) patches with random flips and rotations, NCHW float 0..1."""
    import torch

    p, lrs, hrs = options.patch_size, [], []
    for _ in range(options.batch_size):
        lr, hr = images[int(rng.integers(len(images)))]
        y = int(rng.integers(0, lr.shape[0] - p + 1))
        x = int(rng.integers(0, lr.shape[1] - p + 1))
        lr_patch = lr[y:y + p, x:x + p]
        hr_patch = hr[y * scale:(y + p) * scale, x * scale:(x + p) * scale]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        lr_patch, hr_patch = np.rot90(lr_patch, k), np.rot90(hr_patch, k)
        if flip:
            lr_patch, hr_patch = lr_patch[:, ::-1], hr_patch[:, ::-1]
        lrs.append(lr_patch.transpose(2, 0, 1))
        hrs.append(hr_patch.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(lrs).copy()), torch.from_numpy(np.stack(hrs).copy())


def super_resolve(model: nn.Module, lr: np.ndarray, native_range: int, stride: int,
                  device: torch.device) -> np.ndarray:
    """Whole-image inference: HxWx3 float 0..1 in, (H*s)x(W*s)x3 float 0..1 out (the LR image is
    reflect-padded to a multiple of the head stride and the output cropped back)."""
    import torch

    h, w = lr.shape[:2]
    pad_h, pad_w = (-h) % stride, (-w) % stride
    x = np.pad(lr, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    tensor = torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(device) * native_range
    with torch.no_grad():
        y = model(tensor)[0].cpu().numpy().transpose(1, 2, 0) / native_range
    scale = y.shape[0] // x.shape[0]
    return y[: h * scale, : w * scale]


def evaluate_model(model: nn.Module, dataset: Dataset, native_range: int, stride: int,
                   device: torch.device) -> dict:
    """Standard-protocol PSNR/SSIM of the model and of MATLAB bicubic, per image and mean."""
    rows = []
    model.eval()
    for pair in dataset:
        lr, hr = pair.load()
        hr8 = to_uint8(hr)
        sr = to_uint8(super_resolve(model, lr, native_range, stride, device))
        bicubic = to_uint8(imresize(lr, float(dataset.scale)))
        s = dataset.scale
        rows.append({"image": pair.name, "psnr": psnr(sr, hr8, s), "ssim": ssim(sr, hr8, s),
                     "bicubic_psnr": psnr(bicubic, hr8, s), "bicubic_ssim": ssim(bicubic, hr8, s)})
    mean = {key: float(np.mean([r[key] for r in rows]))
            for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    return {**mean, "gain_db": mean["psnr"] - mean["bicubic_psnr"], "images": rows}


def save_checkpoint(model: nn.Module, source: str, path: str | Path) -> None:
    """Write the weights in the layout's own checkpoint format (to a file :func:`publish`
    renames into place)."""
    import torch

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"params": state} if source == "basicsr" else state
    if source == "rcan-pytorch":
        payload = {"state_dict": state}
    torch.save(payload, path)


def train(source: str, variant: str, scale: int, train_set: Dataset, val_set: Dataset,
          out: str | Path, options: TrainOptions = TrainOptions(), init: nn.Module | None = None,
          init_weights: str | Path | None = None, resume: bool = False,
          progress: bool | None = None) -> dict:
    """Train ``variant`` in layout ``source``; publish the checkpoint with its model card (the
    sidecar: recipe, time, validation history, held-out PSNR/SSIM) and return the card."""
    import torch

    options.check()
    check_destination(out, [init_weights])
    config = variant_config(variant, scale)
    stride = config.head_stride
    if options.patch_size % stride:
        raise UserError(f"--patch-size {options.patch_size}: must be a multiple of {stride}")
    native = get_source(source).native_range
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(options.seed)
    model = init if init is not None else build_model(source, config)
    model = model.to(device).train()
    # The official MeanShift convs are trainable by accident in the original code; kept fixed
    # here, so the checkpoint converts exactly to the BasicSR layout (mean as a constant).
    for name, parameter in model.named_parameters():
        if name.startswith(("sub_mean.", "add_mean.")):
            parameter.requires_grad_(False)
    images = [pair.load() for pair in train_set]
    images = [(lr, hr) for lr, hr in images if min(lr.shape[:2]) >= options.patch_size]
    if not images:
        raise UserError(f"{train_set.name}: no image has an LR side of {options.patch_size} px")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=options.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(options))
    rng = np.random.default_rng(options.seed)
    history: list[dict] = []
    start_step = 0
    state_path = Path(str(out) + ".state.pt")
    if resume:
        if not state_path.is_file():
            raise UserError(f"--resume: no training state at {state_path}")
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start_step, history = state["step"], state["history"]
    started = time.perf_counter()
    bar = tqdm(range(start_step, options.steps), initial=start_step, total=options.steps,
               desc=f"train {variant} x{scale}", disable=progress_off(progress))
    running = None
    for step in bar:
        lr_batch, hr_batch = _patches(images, options, scale, rng)
        output = model(lr_batch.to(device) * native)
        loss = torch.nn.functional.l1_loss(output / native, hr_batch.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % options.val_every == 0 or step + 1 == options.steps:
            result = evaluate_model(model, val_set, native, stride, device)
            model.train()
            history.append({"step": step + 1, "loss": running, "val_psnr": result["psnr"],
                            "bicubic_psnr": result["bicubic_psnr"]})
            bar.set_postfix(loss=f"{running:.4f}", val_psnr=f"{result['psnr']:.2f}")
            _save_state(state_path, model, optimizer, scheduler, rng, step + 1, history)
        else:
            bar.set_postfix(loss=f"{running:.4f}")
    model.eval()
    final = evaluate_model(model, val_set, native, stride, device)
    card = Record.new(
        "checkpoint", source=source, variant=variant, config=config.as_dict(),
        native_input_range=native, input_range=native, model_card=True,
        recipe={**asdict(options), "loss": "L1", "optimizer": "Adam",
                "augment": "flips + 90-degree rotations", "device": device.type},
        train_set=train_set.describe(), val_set=val_set.describe(),
        seconds=time.perf_counter() - started, history=history, heldout=final,
        init_weights=str(init_weights) if init_weights else None)
    return publish(out, card, lambda tmp: save_checkpoint(model, source, tmp))


def _save_state(path: Path, model, optimizer, scheduler, rng, step: int, history: list) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "step": step, "history": history}, tmp)


def train_files(out: str | Path, options: TrainOptions, job: TrainJob,
                progress: bool | None = None) -> dict:
    """Train ``job`` with the recipe ``options``; write the checkpoint and its model card."""
    from .archs import canonical_variant
    from .checkpoints import load_checkpoint
    from .data.datasets import get_dataset

    options.check()
    variant = canonical_variant(job.variant)
    check_destination(out, [job.weights])
    if job.val_dataset is None and job.dataset != "samples":
        raise UserError("--val-dataset is required unless --dataset samples (which has a "
                        "held-out split)")
    val_name = job.val_dataset or job.dataset
    train_set = get_dataset(job.dataset, job.scale, job.data_root,
                            split="train" if job.dataset == "samples" else None)
    val_set = get_dataset(val_name, job.scale, job.data_root,
                          split="heldout" if val_name == "samples" else None)
    init = None
    if job.weights is not None:
        init = load_checkpoint(job.weights, job.source, variant, job.scale).model
    return train(job.source, variant, job.scale, train_set, val_set, out, options, init=init,
                 init_weights=job.weights, resume=job.resume, progress=progress)
