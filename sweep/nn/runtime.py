"""What training and inference share: the device, the precision, building and loading a SegNet,
and running it on a stack of slices in batches.

The trainer (``sweep.training.train``), the shipped model (``sweep.nn.model_file``) and test-time choices
(``sweep.nn.postprocess``) all run the network through here, so inference never imports the trainer.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from model import SegNet, SegNetConfig
from sweep.core.errors import UsageError
from sweep.nn import threads

EVAL_BATCH = 64  # slices per forward pass when evaluating: the whole val split in one or two passes


@dataclass
class DeviceSplit:
    """A split as tensors on the training device: images ``(N, 1, H, W)`` in [0, 1], masks ``(N, H, W)``."""

    images: torch.Tensor
    masks: torch.Tensor | None

    @classmethod
    def from_arrays(cls, images: np.ndarray, masks: np.ndarray | None, device: torch.device) -> DeviceSplit:
        x = torch.as_tensor(images, dtype=torch.float32, device=device).unsqueeze(1)
        y = None if masks is None else torch.as_tensor(masks, device=device).long()
        return cls(x, y)

    def __len__(self) -> int:
        return self.images.shape[0]


Fold = tuple[DeviceSplit, DeviceSplit]  # (train, held-out) of one cross-validation fold


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:K``; a ValueError names what is wrong (the caller names the flag).

    Only these: ``torch.device`` also parses ``meta``, ``mps``, ``xla``..., which the trainer cannot use
    and which would otherwise fail every trial of a study instead of the command.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ValueError("expected auto, cpu, cuda or cuda:K")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device


def resolve_device_or_fail(name: str) -> torch.device:
    """``resolve_device`` for a command's ``--device``: a bad name is a UsageError naming the flag."""
    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device {name!r}: {str(err).strip().splitlines()[0]}") from None


def worker_device(device: torch.device, worker: int) -> torch.device:
    """The device of worker i of a run on ``device``: with ``cuda`` (no index), GPU i mod count;
    several workers may share one GPU."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", worker % torch.cuda.device_count())
    return device


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has bf16 dot-product units, so bf16 autocast beats fp32.

    Intel AMX (``amx_bf16``) and AVX512-BF16 (``avx512_bf16``: Intel Cooper Lake and later, AMD
    Zen 4 and later) both qualify: on a 2-core AMD EPYC with AVX512-BF16 and no AMX, bf16 +
    channels_last trained the benchmark's eight sweep configurations 1.2-1.9x faster than fp32.
    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when not given).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_bf16(device: torch.device) -> bool:
    """bf16 autocast where it trains faster than float32.

    Not on a GPU: there cuDNN runs float32 convolutions in TF32 already, and at this task's sizes
    (96 x 96, batches of 2-32) the casts cost more than the arithmetic saves; on an H100, float32
    trained 1.3x faster than bf16 for both SegNet-VGG16 and the small shape
    (``benchmarks/gpu_variants.py``, docs/PERFORMANCE.md).
    """
    return device.type == "cpu" and cpu_has_bf16()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Per-slice zero mean, unit variance: MR intensities have no absolute scale."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    # A one-pixel slice has no sample spread (Bessel's correction would divide by 0): its spread is 0.
    std = images.std(dim=(1, 2, 3), keepdim=True, correction=1 if images[0].numel() > 1 else 0)
    return (images - mean) / (std + 1e-6)


def build_model(model_cfg: SegNetConfig, device: torch.device) -> SegNet:
    model = SegNet.from_config(model_cfg).to(device)
    return model.to(memory_format=torch.channels_last)


def load_model(model_cfg: SegNetConfig, state_dict: dict, device: torch.device) -> SegNet:
    model = build_model(model_cfg, device)
    model.load_state_dict(state_dict)
    return model.eval()


@torch.inference_mode()
def predict_logits(model, images: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` (float32) for images ``(N, 1, H, W)`` in [0, 1], in large batches."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], EVAL_BATCH):
        done = threads.timed("infer")
        x = normalize(images[start : start + EVAL_BATCH]).contiguous(memory_format=torch.channels_last)
        with autocast(images.device, bf16):
            out.append(model(x).float())
        done(x.shape[0])
    return torch.cat(out)


def to_cpu(obj):
    """A copy of nested dicts, lists and tuples with every tensor copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
