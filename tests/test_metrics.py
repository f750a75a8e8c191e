import math

import pytest
import torch

from sweep.training.losses import class_weights, segmentation_loss, soft_dice_loss
from sweep.nn.metrics import dice_counts, dice_from_counts, dice_scores


def test_dice_hand_computed():
    target = torch.tensor([[0, 1, 1, 2], [3, 3, 0, 0]])
    pred = torch.tensor([[0, 1, 0, 2], [3, 2, 0, 1]])
    d = dice_scores(pred, target)
    # flat positions 0..7. bg: P={0,2,6}, G={0,6,7}, overlap 2 -> 4/6
    assert d["dice_bg"] == pytest.approx(2 / 3)
    # RV: P={1,7}, G={1,2}, overlap 1 -> 2/4
    assert d["dice_rv"] == pytest.approx(0.5)
    # Myo: P={3,5}, G={3} -> 2/3
    assert d["dice_myo"] == pytest.approx(2 / 3)
    # LV: P={4}, G={4,5} -> 2/3
    assert d["dice_lv"] == pytest.approx(2 / 3)
    assert d["dice_fg"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert d["dice_mean4"] == pytest.approx((2 / 3 + 0.5 + 2 / 3 + 2 / 3) / 4)


def test_empty_class_in_both_scores_one_and_missed_class_zero():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 3
    pred = torch.zeros_like(target)
    d = dice_scores(pred, target)
    assert d["dice_rv"] == 1.0 and d["dice_myo"] == 1.0  # absent from both
    assert d["dice_lv"] == 0.0  # present in ground truth only
    pred[1, 3, 3] = 1
    assert dice_scores(pred, target)["dice_rv"] == 0.0  # predicted only


def test_stack_dice_sums_counts_over_images_not_mean_of_images():
    # image 1: LV 1 px predicted right; image 2: LV 3 px, 1 predicted -> stack 2*2/(2+4) = 2/3
    target = torch.tensor([[[3, 0, 0, 0]], [[3, 3, 3, 0]]])
    pred = torch.tensor([[[3, 0, 0, 0]], [[3, 0, 0, 0]]])
    assert dice_scores(pred, target)["dice_lv"] == pytest.approx(2 / 3)
    counts = dice_counts(pred[:1], target[:1]) + dice_counts(pred[1:], target[1:])
    assert dice_from_counts(counts)["dice_lv"] == pytest.approx(2 / 3)


def test_class_weights_power_zero_is_uniform_and_one_balances():
    masks = torch.tensor([0] * 90 + [1] * 5 + [2] * 3 + [3] * 2)
    assert torch.allclose(class_weights(masks, 0.0), torch.ones(4))
    w = class_weights(masks, 1.0)
    freq = torch.tensor([0.9, 0.05, 0.03, 0.02])
    assert torch.allclose(w * freq, (w * freq)[0].expand(4), rtol=1e-4)  # every class weighs the same in total
    assert (w * freq).sum() == pytest.approx(1.0, rel=1e-4)


def test_losses_perfect_prediction_and_mix():
    target = torch.randint(0, 4, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target) < 1e-3
    logits = torch.randn(2, 4, 8, 8)
    ce = segmentation_loss(logits, target, None, 0.0)
    dice = segmentation_loss(logits, target, None, 1.0)
    mix = segmentation_loss(logits, target, None, 0.25)
    assert mix == pytest.approx(0.75 * float(ce) + 0.25 * float(dice), rel=1e-5)
    assert math.isfinite(float(mix))
