"""SegNet for 4-class cardiac MR segmentation. No optuna, no I/O."""

from model.segnet import SegNet, SegNetConfig, count_parameters

__all__ = ["SegNet", "SegNetConfig", "count_parameters"]
