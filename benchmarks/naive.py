"""The NAIVE baseline: how the original coursework trained, for the benchmarks to measure against.

A DataLoader re-reading the PNGs every epoch, float32, softmax then ``nn.CrossEntropyLoss`` on
the softmax output (the original's double softmax), ``.item()`` every step, Adam 1e-3, batch 10.
It is written here on purpose, not imported from the package: it is what a user would write
without the tool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from model import SegNet, SegNetConfig

N_CLASSES = 4


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that host clocks time it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)



def mask_path(split_dir: Path, image: Path) -> Path:
    path = split_dir / "mask" / f"{image.stem}_mask.png"
    return path if path.exists() else split_dir / "mask" / image.name


def split_images(split_dir: Path) -> list[Path]:
    return sorted(p for p in (split_dir / "image").iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))




class PngDataset(torch.utils.data.Dataset):
    """Opens each PNG with Pillow in ``__getitem__``: image ``(1, H, W)`` float in [0, 1], mask ``(H, W)`` long."""

    def __init__(self, split_dir: Path) -> None:
        self.images = split_images(Path(split_dir))
        self.masks = [mask_path(Path(split_dir), p) for p in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        with Image.open(self.images[index]) as img:
            image = np.asarray(img, dtype=np.float32) / 255.0
        with Image.open(self.masks[index]) as img:
            mask = np.asarray(img, dtype=np.int64)
        return torch.from_numpy(image).unsqueeze(0), torch.from_numpy(mask)


def naive_train_epoch(model, loader, optimizer, criterion, device) -> float:
    model.train()
    total = 0.0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        optimizer.zero_grad()
        probs = F.softmax(model(images), dim=1)
        loss = criterion(probs, masks)  # cross-entropy of the softmax output: the original's double softmax
        loss.backward()
        optimizer.step()
        total += loss.item()  # a host sync every step, as the original
    return total / max(len(loader), 1)


def naive_evaluate(model, loader, device) -> dict[str, float]:
    """Stack Dice per class over the split, on the host, batch by batch."""
    model.eval()
    inter, n_pred, n_true = (np.zeros(N_CLASSES) for _ in range(3))
    with torch.no_grad():
        for images, masks in loader:
            pred = model(images.to(device)).argmax(dim=1).cpu().numpy()
            true = masks.numpy()
            for c in range(N_CLASSES):
                p, t = pred == c, true == c
                inter[c] += np.logical_and(p, t).sum()
                n_pred[c] += p.sum()
                n_true[c] += t.sum()
    model.train()
    denom = n_pred + n_true
    dice = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
    return {"dice_fg": float(dice[1:].mean()), "dice_mean4": float(dice.mean())}


def naive_fit(model_cfg: SegNetConfig, folder: Path, **kwargs) -> list[dict]:
    """Train like the coursework; one record per epoch with its seconds (train + val).
    Takes ``naive_train``'s keyword arguments."""
    return naive_train(model_cfg, folder, **kwargs)[1]


def naive_train(
    model_cfg: SegNetConfig,
    folder: Path,
    *,
    epochs: int,
    device: torch.device,
    lr: float = 1e-3,
    batch_size: int = 10,
    seed: int = 0,
    num_workers: int = 0,
    on_epoch: Callable[[int, dict], None] | None = None,
    keep_best: bool = False,
) -> tuple[nn.Module, list[dict]]:
    """``naive_fit`` that also returns the model: its last weights, or with ``keep_best`` those
    of its best val epoch (as a script that checkpoints on val would ship)."""
    torch.manual_seed(seed)
    model = SegNet.from_config(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    train_loader = DataLoader(PngDataset(folder / "train"), batch_size=batch_size, shuffle=True, num_workers=num_workers)
    val_loader = DataLoader(PngDataset(folder / "val"), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    history, best, best_state = [], -1.0, None
    for epoch in range(1, epochs + 1):
        sync(device)
        start = time.perf_counter()
        loss = naive_train_epoch(model, train_loader, optimizer, criterion, device)
        scores = naive_evaluate(model, val_loader, device)
        sync(device)
        record = {"epoch": epoch, "seconds": time.perf_counter() - start, "train_loss": loss,
                  "val_dice_fg": scores["dice_fg"]}
        history.append(record)
        if keep_best and scores["dice_fg"] > best:
            best, best_state = scores["dice_fg"], {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, record)
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, history
