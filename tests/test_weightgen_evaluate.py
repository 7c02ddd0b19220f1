"""Memorisation metrics and fine-tuning summaries against hand-computed values."""

import numpy as np
import pytest
import torch

from raygen.weightgen.evaluate import accuracy_summary, memorisation, steps_to_fraction, wrong_iou


def test_wrong_iou_by_hand():
    y = torch.tensor([0, 1, 2, 3, 4])
    a = torch.tensor([0, 0, 0, 3, 4])  # wrong on {1, 2}
    b = torch.tensor([0, 0, 2, 0, 4])  # wrong on {1, 3}
    assert float(wrong_iou(a, b, y)) == pytest.approx(1 / 3)
    assert float(wrong_iou(y, y, y)) == 1.0  # no mistakes at all: identical behaviour


def test_memorisation_nearest_original():
    orig = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    gen = torch.tensor([[3.0, 4.5]])
    y = torch.tensor([0, 1, 2, 3])
    pred_orig = torch.tensor([[0, 1, 2, 0], [0, 1, 0, 0], [1, 1, 2, 3]])
    pred_gen = torch.tensor([[0, 1, 0, 3]])
    m = memorisation(gen, orig, pred_gen, pred_orig, y)
    assert np.allclose(m["gen_nearest_dist"], [0.5])
    assert np.allclose(m["gen_nearest_iou"], [1 / 2])  # {2} vs {2, 3}
    assert np.allclose(m["orig_nearest_dist"], [5.0, 5.0, np.sqrt(49 + 16)])
    assert np.allclose(m["orig_nearest_iou"], [1 / 2, 1 / 2, 0.0])


def test_accuracy_summary_and_steps_to_fraction():
    s = accuracy_summary(np.array([0.5, 0.7, 0.9]))
    assert (s["acc_mean"], s["acc_median"], s["acc_max"], s["acc_min"], s["n"]) == (70.0, 70.0, 90.0, 50.0, 3)
    curve = np.array([0.1, 0.5, 0.8, 0.85, 1.0])
    assert steps_to_fraction(curve, every=10) == 40  # 0.9 * 1.0 first reached at index 4
    assert steps_to_fraction(curve, every=10, fraction=0.8) == 20
