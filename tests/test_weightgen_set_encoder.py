"""Dataset encoders: attention blocks against hand-computed attention, the invariances a support-set
encoder must have (order of a class's examples) and must not have (which class carries which
label), shapes, and the contrastive loss against its closed form."""

import math

import pytest
import torch

from raygen.weightgen.set_encoder import ISAB, MAB, PMA, SetEncoder, contrastive_loss


def _identity_mab(dim: int, heads: int) -> MAB:
    """W_q = W_k = W_v = I, zero biases, W_o = 0 (so the rFF term relu(H W_o) vanishes)."""
    mab = MAB(dim, heads)
    with torch.no_grad():
        for lin in (mab.q, mab.k, mab.v):
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
        mab.o.weight.zero_()
        mab.o.bias.zero_()
    return mab


def test_mab_matches_hand_computed_attention_one_and_two_heads():
    x = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # one head: scores x.y_j / sqrt(2) = [1/sqrt2, 0]; a = softmax; H = x + a_0 y_0 + a_1 y_1
    a0 = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)
    torch.testing.assert_close(_identity_mab(2, 1)(x, y), torch.tensor([[1 + a0, 1 - a0]]))
    # two heads, one column each (scaled by sqrt(d) = sqrt(2), as Lee et al.'s code):
    # head 0 scores [1, 0]/sqrt2 -> weights [a0, 1 - a0] on values [1, 0] -> a0;
    # head 1 scores [0, 0] -> uniform on values [0, 1] -> 0.5
    torch.testing.assert_close(_identity_mab(2, 2)(x, y), torch.tensor([[1 + a0, 0.5]]))
    # the rFF term: with W_o = I, H + relu(H)
    mab = _identity_mab(2, 1)
    with torch.no_grad():
        mab.o.weight.copy_(torch.eye(2))
    torch.testing.assert_close(mab(x, y), 2 * torch.tensor([[1 + a0, 1 - a0]]))


def test_pma_with_one_seed_is_attention_pooling_and_isab_is_equivariant():
    torch.manual_seed(0)
    pma = PMA(2, 1)
    pma.mab = _identity_mab(2, 1)
    with torch.no_grad():
        pma.ff.weight.copy_(torch.eye(2))
        pma.ff.bias.zero_()
        pma.seeds.copy_(torch.tensor([[1.0, 0.0]]))
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    w = torch.softmax(torch.tensor([2.0, 0.0, 1.0]) / math.sqrt(2), 0)  # seed . relu(z_j) / sqrt(d)
    torch.testing.assert_close(pma(z), torch.tensor([[1.0, 0.0]]) + (w[:, None] * z).sum(0, keepdim=True))
    isab, perm = ISAB(4, 2, 3), torch.tensor([2, 0, 3, 1])
    x = torch.randn(2, 4, 4)
    torch.testing.assert_close(isab(x[:, perm]), isab(x)[:, perm])  # permutation equivariant
    assert pma(torch.randn(7, 5, 2)).shape == (7, 1, 2)  # batched sets: one pooled vector per set


@pytest.mark.parametrize("kind", ["deepsets", "set_transformer"])
def test_encoder_shapes_and_invariances(kind):
    torch.manual_seed(0)
    enc = SetEncoder(feature_dim=6, num_classes=3, hidden=8, cond_dim=5, kind=kind, heads=2, inducing=2)
    support = torch.randn(4, 3, 5, 6)  # [tasks, classes, shots, features]
    c = enc(support)
    assert c.shape == (4, 5)
    # invariant: the order of each class's examples (a different shuffle per class and task)
    shuffled = torch.stack([torch.stack([support[b, k, torch.randperm(5)] for k in range(3)]) for b in range(4)])
    torch.testing.assert_close(enc(shuffled), c)
    # NOT invariant: swapping the support sets of labels 0 and 1 relabels the task
    swapped = support[:, [1, 0, 2]]
    assert (enc(swapped) - c).abs().max() > 1e-3
    # not invariant to the content either: another example changes the embedding
    other = support.clone()
    other[:, 0, 0] += 1.0
    assert (enc(other) - c).abs().max() > 1e-3
    # each task's embedding depends only on its own support set
    torch.testing.assert_close(enc(support[2:3]), c[2:3])
    # spec rebuilds the same module
    again = SetEncoder(**enc.spec)
    again.load_state_dict(enc.state_dict())
    torch.testing.assert_close(again(support), c)


def test_unknown_encoder_kind_is_refused():
    with pytest.raises(ValueError, match="deepsets, set_transformer"):
        SetEncoder(6, 3, kind="transformer")


def test_contrastive_loss_closed_form():
    # two members of task 0, one of task 1; u = v = unit vectors e0, e0, e1 (so l = [[1,1,0],[1,1,0],[0,0,1]]/tau)
    e = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    task = torch.tensor([0, 0, 1])
    tau = 0.5
    # rows 0 and 1: targets 1/2 on columns 0, 1: -log softmax = log(2 e^2 + 1) - 2 for each
    # row 2: target on column 2: log(2 + e^2) - 2; the loss is symmetric here (l = l^T)
    expected = ((math.log(2 * math.e**2 + 1) - 2) * 2 + (math.log(2 + math.e**2) - 2)) / 3
    torch.testing.assert_close(contrastive_loss(e, e, task, tau), torch.tensor(expected, dtype=torch.float64))
    # it falls when the pairs align and rises when they are swapped across tasks
    assert contrastive_loss(e, e[[2, 2, 0]], task, tau) > contrastive_loss(e, e, task, tau)
