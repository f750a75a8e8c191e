"""A saved model as one ONNX or TorchScript file, checked against PyTorch (``predict --export``).

The export maps ``(B, 1, H, W)`` float32 images in [0, 1] to ``(B, C, H, W)`` ensemble
probabilities: per-slice normalisation, every member padded to a multiple of ``2**depth`` and
cropped back, softmax, the mean over each seed's folds, then over seeds (``ensemble_probs``
without TTA). Rotation TTA and largest-component cleaning stay outside.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from model import SegNet
from data.files import output_file
from sweep.core.errors import UsageError, check_writable
from sweep.nn.model_file import ModelBundle, PadToMultiple, Segmenter, ensemble_probs
from sweep.nn.runtime import normalize

EXPORT_FORMATS = ("onnx", "torchscript")
# Max |probability difference| allowed between an export and PyTorch, both float32 on the CPU:
# the two run the same float32 operations in different kernels (~1e-6 apart); 1e-4 leaves room
# for that and still catches a wrong layer, a missing normalisation or mis-ordered unpooling.
EXPORT_TOLERANCE = 1e-4
DEFAULT_EXPORT_SIZE = (96, 96)  # the phantom's and the coursework's slice size


def export_size(bundle: ModelBundle) -> tuple[int, int]:
    """The slice size the model was trained on, where the preprocessing records one."""
    prep = bundle.preprocessing or {}
    if isinstance(prep.get("image_size"), (list, tuple)) and len(prep["image_size"]) == 2:
        return int(prep["image_size"][0]), int(prep["image_size"][1])
    if isinstance(prep.get("slice_size"), int):  # data.volumes.preprocessing(): square slices
        return prep["slice_size"], prep["slice_size"]
    return DEFAULT_EXPORT_SIZE


def export_model(bundle_or_segmenter: ModelBundle | Segmenter, fmt: str, path: str | os.PathLike,
                 example_shape: tuple[int, int, int, int] | None = None) -> dict:
    """Write the ensemble as ONNX or TorchScript to ``path``, run it, and check it against PyTorch.

    The export maps ``(B, 1, H, W)`` float32 images in [0, 1] to ``(B, C, H, W)`` ensemble
    probabilities (``ExportEnsemble``); NOT inside: rotation TTA and largest-component cleaning
    (take the argmax and clean outside). Both take any B, H and W; ``example_shape`` (default
    ``(1, 1, *export_size(bundle))``) is the size ONNX is traced at and checks start from.
    The saved file is loaded back (``torch.jit.load`` / onnxruntime) and run on fresh random
    inputs, of another batch size and, for TorchScript, also of an odd size, next to
    ``ensemble_probs`` in float32 on the CPU; beyond ``EXPORT_TOLERANCE`` the file is removed and
    ExportMismatchError raised. Returns ``{"format", "path", "input_shape", "max_abs_diff", "tolerance"}``.
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--export {fmt}: expected one of {', '.join(EXPORT_FORMATS)}")
    bundle = bundle_or_segmenter.bundle if isinstance(bundle_or_segmenter, Segmenter) else bundle_or_segmenter
    n, c, h, w = example_shape or (1, 1, *export_size(bundle))
    path = Path(path)
    check_writable(path.parent, f"--export {fmt} {path}")
    reference = Segmenter(bundle, device="cpu", bf16=False)  # float32: what an export computes
    net = ExportEnsemble(reference).eval()
    generator = torch.Generator().manual_seed(0)
    # Batch 2 at least: torch.export specialises a batch of 1 into a constant.
    example = torch.rand((max(n, 2), c, h, w), generator=generator)
    with output_file(path) as tmp:  # checked before it takes the name: a failed check leaves no file
        run = _export_torchscript(net, tmp) if fmt == "torchscript" else _export_onnx(net, example, tmp)
        diff = 0.0
        for check_shape in [(n + 2, c, h, w), (2, c, h + 5, w + 3)]:  # another batch size; an odd size
            x = torch.rand(check_shape, generator=generator)
            diff = max(diff, float((run(x) - ensemble_probs(reference.models, x, bf16=False, tta=False)).abs().max()))
        if not diff <= EXPORT_TOLERANCE:
            raise ExportMismatchError(f"--export {fmt}: exported model differs from PyTorch by {diff:.3g} "
                                      f"(> {EXPORT_TOLERANCE:g}); nothing written to {path}")
    return {"format": fmt, "path": str(path), "input_shape": ["B", c, "H", "W"], "max_abs_diff": diff, "tolerance": EXPORT_TOLERANCE}


class ExportMismatchError(RuntimeError):
    """An export's outputs differ from PyTorch's beyond ``EXPORT_TOLERANCE``: a bug, not bad input."""


def _export_torchscript(net: nn.Module, path: Path):
    """Script (not trace: a trace would freeze the unpooling and padding sizes of one input size)."""
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the format still serves C++ and mobile users
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)

    return run


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path):
    """``torch.onnx.export`` (the torch.export-based exporter; it maps max-unpooling to ONNX MaxUnpool)."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("--export onnx: needs the onnx extra (pip install 'segnet-sweep[onnx]')") from None
    dynamic = torch.export.Dim.DYNAMIC
    try:
        with _quiet_exporter():
            torch.onnx.export(net, (example,), str(path), input_names=["images"], output_names=["probs"],
                              dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},), dynamo=True, verbose=False)
    except ImportError as err:
        raise UsageError(f"--export onnx: needs the onnx extra (pip install 'segnet-sweep[onnx]'): {err}") from None
    except Exception as err:  # noqa: BLE001 -- the exporter fails through many types
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UsageError(f"--export onnx: the ONNX exporter cannot export this model ({reason}); "
                         "use --export torchscript") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    return run


@contextmanager
def _quiet_exporter():
    """The exporter and its ONNX libraries log and warn about optional dependencies (torchvision),
    deprecations and attribute defaults, none of which says anything about this model."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class ExportSegNet(nn.Module):
    """A SegNet's inference forward, written so that TorchScript compiles it and torch.export traces it.

    ``SegNet.forward`` indexes its decoders by a loop variable (TorchScript refuses) and checks
    unpooling sizes with Python conditions (tracing turns them into tensors and fails). This is
    the same computation on the same modules: pool with indices, unpool at them, deepest decoder
    first; dropout is left out because it is the identity at inference. ``export_model`` checks
    every export against ``SegNet.forward``, so a change to SegNet that is not mirrored here fails
    loudly. ``(B, 1, H, W) -> (B, C, H, W)`` logits, H and W divisible by ``2**depth``.
    """

    def __init__(self, model: SegNet) -> None:
        super().__init__()
        self.encoders = model.encoders
        self.decoders = nn.ModuleList(list(model.decoders)[::-1])  # deepest first, the order they run
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices: list[torch.Tensor] = []
        sizes: list[list[int]] = []
        for encoder in self.encoders:
            x = encoder(x)
            sizes.append([x.shape[-2], x.shape[-1]])
            x, idx = F.max_pool2d_with_indices(x, 2, 2)
            indices.append(idx)
        for decoder in self.decoders:
            x = F.max_unpool2d(x, indices.pop(), 2, 2, 0, sizes.pop())
            x = decoder(x)
        return self.classifier(x)


class ExportPad(PadToMultiple):
    """``PadToMultiple`` that always pads (by zero where H, W are multiples already): a branch on the
    size would be fixed at the example's size by torch.export, silently skipping padding later."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.padded(x)


class ExportEnsemble(nn.Module):
    """The ensemble as one module: ``(B, 1, H, W)`` images in [0, 1] -> ``(B, C, H, W)`` probabilities.

    Per-slice normalisation, every member (padded to a multiple of ``2**depth`` and cropped back),
    softmax, the mean over each seed's folds, then over seeds: ``ensemble_probs`` without TTA, in
    float32. Rotation TTA and largest-component cleaning are NOT inside: apply them outside.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.seeds = nn.ModuleList(
            nn.ModuleList(ExportPad(ExportSegNet(m.model), m.multiple) for m in models) for models in segmenter.models
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x)
        per_seed: list[torch.Tensor] = []
        for models in self.seeds:
            probs: list[torch.Tensor] = []
            for m in models:
                probs.append(m(x).softmax(1))
            per_seed.append(torch.stack(probs).mean(0))
        return torch.stack(per_seed).mean(0)
