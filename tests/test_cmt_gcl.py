"""raygen.cmt.gcl: the contrastive loss falls on a separable toy; training is seeded."""

import torch
from torch import nn

from raygen.cmt.gcl import ComponentwiseClassifier, train_gcl, wrong_domains
from raygen.cmt.inn import InvertibleNet


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    # two domains whose components have very different scales: easy to tell apart per component
    s = torch.cat([0.1 * torch.randn(300, 2, generator=g, dtype=torch.float64),
                   3.0 * torch.randn(300, 2, generator=g, dtype=torch.float64)])
    u = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(300, dtype=torch.long)])
    return s @ torch.tensor([[1.0, 0.5], [-0.3, 1.0]], dtype=torch.float64).T, u


def _train(z, u, seed, epochs=15):
    g = torch.Generator().manual_seed(seed)
    net = InvertibleNet(2, 2, 8, generator=g)
    return train_gcl(net, z, u, n_domains=2, classifier_hidden=10, lr=1e-2, weight_decay=0.0, batch_size=64,
                     epochs=epochs, generator=g)


def test_gcl_loss_decreases_on_a_separable_toy():
    history = _train(*_toy(), seed=0)
    assert history[0] > 0.9  # near 2·log 2 at chance
    assert history[-1] < 0.5 * history[0]


def test_training_is_a_function_of_the_generator_and_leaves_global_state_alone():
    z, u = _toy()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _train(z, u, 1, epochs=2)
    assert _train(z, u, 1, epochs=2) == first != _train(z, u, 2, epochs=2)
    assert torch.equal(torch.get_rng_state(), before)


def test_componentwise_classifier_is_a_sum_of_two_hidden_layer_mlps():
    dim, k, hidden = 3, 4, 5
    clf = ComponentwiseClassifier(dim, k, hidden, torch.Generator().manual_seed(0))
    s = torch.randn(7, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    expected = torch.zeros(7, k, dtype=torch.float64)
    for d in range(dim):  # ψ_d as an explicit nn.Sequential: Linear(1, H), ReLU, Linear(H, H), ReLU, Linear(H, K)
        mlp = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                            nn.Linear(hidden, k)).double()
        with torch.no_grad():
            mlp[0].weight.copy_(clf.w1[d][:, None])
            mlp[0].bias.copy_(clf.b1[d])
            mlp[2].weight.copy_(clf.w2[d].T)
            mlp[2].bias.copy_(clf.b2[d])
            mlp[4].weight.copy_(clf.w3[d].T)
            mlp[4].bias.copy_(clf.b3[d])
            expected += mlp(s[:, d : d + 1])
    torch.testing.assert_close(clf(s, u), expected[torch.arange(7), u], rtol=1e-12, atol=1e-12)


def test_wrong_domains_are_uniform_over_the_others():
    u = torch.zeros(30_000, dtype=torch.long) + 2
    wrong = wrong_domains(u, 4, torch.Generator().manual_seed(0))
    assert not (wrong == 2).any()
    counts = torch.bincount(wrong, minlength=4).double() / len(u)
    assert torch.allclose(counts[[0, 1, 3]], torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)
