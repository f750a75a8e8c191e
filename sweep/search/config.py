"""How a SegNet is trained: ``TrainConfig``, with no torch, so that options and the search space read it cheaply."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_EPOCHS = 50  # epoch budget of a trial, where neither the command line nor a preset gives one
# Default seconds between resume points: copying every fold's weights and optimiser state each
# epoch would cost more than the minute of training an interruption can then lose.
RESUME_SECONDS = 60.0


@dataclass(frozen=True)
class TrainConfig:
    """How a SegNet is trained; with a SegNetConfig, a trial's whole set of hyperparameters."""

    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.0  # decoupled (AdamW) weight decay
    batch_size: int = 10
    schedule: str = "constant"  # "constant" or "cosine" (linear warm-up, then cosine decay to 0)
    dice_weight: float = 0.0  # loss = (1 - w) * cross-entropy + w * soft Dice
    class_weight_power: float = 0.0  # CE class weights = (1 / class frequency) ** power
    aug_rotate: float = 0.0  # max rotation, degrees (short-axis orientation matters: keep it small)
    aug_scale: float = 0.0  # max relative zoom in or out
    aug_gamma: float = 0.0  # max |log gamma| of an intensity gamma change
    aug_translate: float = 0.0  # max shift, fraction of the field of view, each axis
    aug_elastic: float = 0.0  # max elastic displacement, pixels (a smooth 4 x 4 control-point field)
    aug_lowres: float = 0.0  # max resolution loss: half the slices down-sampled by up to 1 + this, and back
    aug_blur: float = 0.0  # max Gaussian blur sigma, pixels
    aug_noise: float = 0.0  # max Gaussian noise, in units of the slice's intensity spread
    aug_mirror: float = 0.0  # probability of each of: flip rows, flip columns, swap the two axes
    epochs: int = DEFAULT_EPOCHS  # epoch budget
    # The cost of an epoch, fixed whatever the data set's size (0: one pass over every train slice, whole).
    epoch_slices: int = 0  # slices drawn per epoch (a fresh permutation, repeated as needed)
    patch: int = 0  # side of the random square crop each slice is trained on (0: the whole slice)

    def to_dict(self) -> dict:
        return asdict(self)

