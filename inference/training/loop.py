"""The train loop: sampling, loss (cross-entropy + soft Dice), checkpoints, resume, weights.

Sampling: entries belong to groups by kind ("healthy", "lesion", "real"); each slice of a
batch comes from a group drawn with `group_weights` (groups absent from the data drop out),
then from a slice of that group (lesion slices of the "lesion" group `lesion_slice_weight`
times as often). Lesion-only labels (real slices) mark non-lesion pixels NOT_LESION_LABEL:
the cross-entropy there is that of "background or lung" (the two probabilities summed),
and the soft Dice counts them for the lesion classes only.

Deterministic for a given seed on CPU: torch and numpy are seeded, the numpy generator
state is stored in each checkpoint, so a resumed run continues the same sample stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch
from torch.nn import functional as F

from inference.engines.cnn import sha256_of
from inference.training.augment import AugmentConfig, augment_slice
from inference.training.cache import IGNORE_LABEL, KINDS, NOT_LESION_LABEL, CacheEntry
from inference.unet import NUM_CLASSES, UNet2D, count_parameters, normalise_hu

log = structlog.get_logger(__name__)

WEIGHTS_FORMAT = "ldct-node-unet/1"
CHECKSUM_FILE = "SHA256SUMS"


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 8
    learning_rate: float = 2e-3
    base_width: int = 16
    levels: int = 4
    crop: int = 192
    checkpoint_every: int = 100
    seed: int = 0
    lesion_slice_weight: float = 3.0
    #: Share of each kind of slice in a batch ("healthy", "lesion", "real"); renormalised
    #: over the kinds present. The default keeps the old behaviour: one pool.
    group_weights: dict[str, float] = field(default_factory=dict)
    #: Learning-rate warm-up steps (short fine-tunes use fewer).
    warmup_steps: int = 50
    # Wall-clock budget (s) for this run, or None. On a shared CPU the step rate is unknown in
    # advance: the cosine schedule then follows max(step fraction, time fraction) and the run
    # stops when the budget is spent (the step reached is saved with the weights; rerunning
    # with that --steps and no budget repeats the same schedule only approximately).
    time_budget_s: float | None = None
    #: What the budget counts: "wall" seconds, or "cpu": this process's CPU seconds divided by
    #: its torch threads (the compute a run got, whatever else shares the machine).
    budget_clock: str = "wall"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def select_device(device: str) -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes, pooled over the batch.

    Ignores IGNORE_LABEL; NOT_LESION_LABEL pixels count for the lesion classes (as negatives)
    but not for lung.
    """
    probs = logits.softmax(1)
    known = target < NOT_LESION_LABEL
    onehot = F.one_hot(torch.where(known, target, 0).long(), NUM_CLASSES).permute(0, 3, 1, 2)
    valid = torch.stack([known | ((target == NOT_LESION_LABEL) & (c >= 2)) for c in range(NUM_CLASSES)], 1)
    probs = probs * valid
    onehot = onehot * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - dice[1:].mean()


def partial_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; NOT_LESION_LABEL pixels score -log(p(background) + p(lung)); ignores 255."""
    log_probs = logits.float().log_softmax(1)
    known = target < NOT_LESION_LABEL
    picked = log_probs.gather(1, torch.where(known, target, 0).long()[:, None])[:, 0]
    not_lesion = torch.logsumexp(log_probs[:, :2], dim=1)
    loss = torch.where(known, -picked, torch.where(target == NOT_LESION_LABEL, -not_lesion, torch.zeros_like(picked)))
    count = (target != IGNORE_LABEL).sum()
    return loss.sum() / count.clamp(min=1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return partial_cross_entropy(logits, target) + soft_dice_loss(logits, target)


class SliceSampler:
    """Draws augmented batches by group (see the module docstring)."""

    def __init__(self, entries: list[CacheEntry], config: TrainConfig, rng: np.random.Generator):
        self.entries = entries
        self.config = config
        self.rng = rng
        groups: dict[str, tuple[list, list]] = {}
        for e, entry in enumerate(entries):
            group = entry.kind if config.group_weights else "all"
            index, weights = groups.setdefault(group, ([], []))
            lesion = np.asarray(
                ((entry.labels >= 2) & (entry.labels < NOT_LESION_LABEL)).reshape(len(entry.labels), -1).any(1)
            )
            for s in range(len(entry.labels)):
                index.append((e, s))
                weights.append(config.lesion_slice_weight if lesion[s] and entry.kind == "lesion" else 1.0)
        unknown = set(config.group_weights) - set(KINDS)
        if unknown:
            raise ValueError(f"group_weights: unknown kinds {sorted(unknown)} (use {KINDS})")
        names = [g for g in groups if not config.group_weights or config.group_weights.get(g, 0) > 0]
        if not names:
            raise ValueError("no training slices in the groups given weight")
        self.groups = [(groups[g][0], np.asarray(groups[g][1]) / np.sum(groups[g][1])) for g in names]
        shares = np.array([config.group_weights.get(g, 0) if config.group_weights else 1.0 for g in names])
        self.group_p = shares / shares.sum()
        self.group_names = names
        self.index = [i for g in names for i in groups[g][0]]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for g in self.rng.choice(len(self.groups), size=self.config.batch_size, p=self.group_p):
            index, p = self.groups[g]
            e, s = index[self.rng.choice(len(index), p=p)]
            entry = self.entries[e]
            hu, lab = augment_slice(entry.hu[s], entry.labels[s], self.rng, self.config.augment, entry.kind)
            images.append(hu)
            labels.append(lab)
        x = normalise_hu(torch.from_numpy(np.stack(images))[:, None])
        y = torch.from_numpy(np.stack(labels)).long()
        return x, y


def _lr_at(step: int, config: TrainConfig, time_fraction: float = 0.0) -> float:
    warmup = config.warmup_steps
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = max((step - warmup) / max(1, config.steps - warmup), time_fraction)
    return 1e-5 + 0.5 * (config.learning_rate - 1e-5) * (1 + np.cos(np.pi * min(1.0, progress)))


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    step: int,
    rng: np.random.Generator,
    config: TrainConfig,
    losses: list[float],
    budget_spent_s: float = 0.0,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "rng": rng.bit_generator.state,
            "config": asdict(config),
            "losses": losses,
            "budget_spent_s": budget_spent_s,
        },
        tmp,
    )
    tmp.replace(path)


def write_checksum(weights_path: Path) -> None:
    """Record the weights' SHA-256 in SHA256SUMS next to them (one `hash  name` line each)."""
    sums = weights_path.parent / CHECKSUM_FILE
    lines = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            if line.strip():
                digest, name = line.split(maxsplit=1)
                lines[name.strip().lstrip("*")] = digest
    lines[weights_path.name] = sha256_of(weights_path)
    sums.write_text("".join(f"{d}  {n}\n" for n, d in sorted(lines.items())))


def save_weights(model: UNet2D, path: Path, version: str, metadata: dict) -> None:
    """Write shipped weights (fp32 state dict + architecture + metadata) and their checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": WEIGHTS_FORMAT,
            "version": version,
            "architecture": model.config,
            "metadata": metadata,
            "state_dict": state,
        },
        path,
    )
    write_checksum(path)


def train(
    entries: list[CacheEntry],
    config: TrainConfig,
    checkpoint_path: Path,
    device: str = "cpu",
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    init_weights: Path | None = None,
) -> tuple[UNet2D, list[float]]:
    """Train a UNet2D on cached entries; returns the model and the per-step losses.

    init_weights: start from shipped weights (site fine-tuning) instead of random ones;
    their architecture then overrides base_width/levels.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dev = select_device(device)
    if init_weights is not None:
        payload = torch.load(init_weights, map_location="cpu", weights_only=True)
        model = UNet2D(**payload["architecture"])
        model.load_state_dict(payload["state_dict"])
        model = model.to(dev)
    else:
        model = UNet2D(base=config.base_width, levels=config.levels).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    start, losses, state = 0, [], {}
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=dev, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        start, losses = int(state["step"]), list(state["losses"])
        log.info("train.resume", step=start)
    config.augment = config.augment if isinstance(config.augment, AugmentConfig) else AugmentConfig(**config.augment)
    sampler = SliceSampler(entries, config, rng)
    log.info(
        "train.start",
        parameters=count_parameters(model),
        slices=len(sampler.index),
        device=str(dev),
        steps=config.steps,
    )
    model.train()
    t0 = time.time()
    spent_before = float(state.get("budget_spent_s", 0.0))
    cpu0 = time.process_time()

    def budget_spent() -> float:
        if config.budget_clock == "cpu":
            return spent_before + (time.process_time() - cpu0) / max(1, torch.get_num_threads())
        return spent_before + time.time() - t0

    stopped_early = False
    for step in range(start, config.steps):
        time_fraction = 0.0
        if config.time_budget_s:
            time_fraction = budget_spent() / config.time_budget_s
            if time_fraction >= 1.0:
                save_checkpoint(checkpoint_path, model, optimizer, step, rng, config, losses, budget_spent())
                log.info("train.time_budget_spent", step=step)
                stopped_early = True
                break
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config, time_fraction)
        x, y = sampler.batch()
        x, y = x.to(dev), y.to(dev)
        loss = segmentation_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step + 1, losses[-1])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            save_checkpoint(checkpoint_path, model, optimizer, step + 1, rng, config, losses, budget_spent())
            recent = float(np.mean(losses[-config.checkpoint_every :]))
            log.info(
                "train.checkpoint",
                step=step + 1,
                loss=round(recent, 4),
                seconds=round(time.time() - t0, 1),
                budget_spent_s=round(budget_spent(), 1),
            )
    if not stopped_early:
        log.info("train.done", step=config.steps)
    model.eval()
    return model, losses
