"""Milliseconds per train slice of one training step (forward, loss, backward, AdamW), by
architecture and slice size: what a patch or a lower resolution saves on real-size data.

    python -m benchmarks.slice_cost [--sizes 192,128,96] [--steps 6]

Random inputs of the given sizes, the trainer's own model build, bf16 autocast where the CPU
runs it fast (``sweep.training.train.use_bf16``) and channels_last; two warm-up steps, then ``--steps``
timed ones.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from model import SegNetConfig
from sweep.training.losses import segmentation_loss
from sweep.training.train import autocast, build_model, normalize, use_bf16

SHAPES = {  # name: (config, batch size)
    "acdc preset (depth 4, width 16, 2 convs)": (SegNetConfig(depth=4, base_width=16, convs_per_stage=(2, 2, 2, 2)), 8),
    "coursework winner (depth 4, width 32, 2 convs)": (SegNetConfig(depth=4, base_width=32, convs_per_stage=(2, 2, 2, 2)), 4),
    "small (depth 3, width 8, 1 conv)": (SegNetConfig(depth=3, base_width=8, convs_per_stage=(1, 1, 1)), 16),
}


def ms_per_slice(cfg: SegNetConfig, batch: int, size: int, steps: int, device: torch.device) -> float:
    bf16 = use_bf16(device)
    model = build_model(cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch, size, size), device=device)

    def step() -> None:
        with autocast(device, bf16):
            logits = model(normalize(x))
        loss = segmentation_loss(logits, y, None, 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps / batch * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="192,128,96")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    device = torch.device("cpu")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 {use_bf16(device)}")
    print("| architecture | " + " | ".join(f"{s} x {s}" for s in sizes) + " |")
    for name, (cfg, batch) in SHAPES.items():
        cells = [f"{ms_per_slice(cfg, batch, s, args.steps, device):.1f} ms" for s in sizes]
        print(f"| {name}, batch {batch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
