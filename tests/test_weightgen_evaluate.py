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


def test_held_out_baselines_pick_by_support_accuracy_and_count_shared_pairs():
    import numpy as np

    from raygen.weightgen.report import picked_by_support, shared_pairs
    from raygen.weightgen.zoo import support_split

    support, test = np.array([0.2, 0.9, 0.9, 0.5]), np.array([0.1, 0.7, 0.3, 0.8])
    assert picked_by_support(support, test, 1) == 0.7  # a tie goes to the lower index
    assert picked_by_support(support, test, 3) == pytest.approx((0.7 + 0.3 + 0.8) / 3)
    zoo = [{"family": "subset", "classes": [3, 1, 4, 0, 2]}, {"family": "subset", "classes": [3, 9, 4, 0, 8]}]
    assert shared_pairs({"family": "subset", "classes": [3, 9, 7, 0, 2]}, zoo) == 3  # 3, 9, 0 in place
    assert shared_pairs({"family": "rotation", "angle": 1.0}, zoo) == 0
    x, y = torch.arange(10.0)[:, None], torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    xs, ys = support_split(x, y, 2, 2)
    assert ys.tolist() == [0, 0, 1, 1] and xs[:, 0].tolist() == [1.0, 3.0, 0.0, 2.0]
