"""raygen.cmt.gcl: the contrastive loss falls on a separable toy; training is seeded."""

import torch

from raygen.cmt.gcl import train_gcl, wrong_domains
from raygen.cmt.inn import InvertibleNet


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    # two domains whose components have very different scales: easy to tell apart per component
    s = torch.cat([0.1 * torch.randn(300, 2, generator=g, dtype=torch.float64),
                   3.0 * torch.randn(300, 2, generator=g, dtype=torch.float64)])
    u = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(300, dtype=torch.long)])
    return s @ torch.tensor([[1.0, 0.5], [-0.3, 1.0]], dtype=torch.float64).T, u


def _train(z, u, seed):
    net = InvertibleNet(2, 2, 8, seed=seed)
    return train_gcl(net, z, u, n_domains=2, classifier_hidden=10, lr=1e-2, weight_decay=0.0, batch_size=64,
                     epochs=15, seed=seed)


def test_gcl_loss_decreases_on_a_separable_toy():
    history = _train(*_toy(), seed=0)
    assert history[0] > 0.9  # near 2·log 2 at chance
    assert history[-1] < 0.5 * history[0]


def test_training_is_a_function_of_the_seed():
    z, u = _toy()
    assert _train(z, u, 1) == _train(z, u, 1)
    assert _train(z, u, 1) != _train(z, u, 2)


def test_wrong_domains_are_uniform_over_the_others():
    u = torch.zeros(30_000, dtype=torch.long) + 2
    wrong = wrong_domains(u, 4, torch.Generator().manual_seed(0))
    assert not (wrong == 2).any()
    counts = torch.bincount(wrong, minlength=4).double() / len(u)
    assert torch.allclose(counts[[0, 1, 3]], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)
