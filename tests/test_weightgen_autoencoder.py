"""The parameter autoencoder reconstructs a zoo of known low rank, and only that."""

import pytest
import torch

from raygen.weightgen.autoencoder import ParamAutoencoder


def _fit(ae, data, held_out, steps=400, lr=3e-3):
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (64,), generator=g)
        loss = ae(data[idx], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((ae.decode(ae.encode(held_out)) - held_out).pow(2).mean() / held_out.var())


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_autoencoder_reconstructs_low_rank_zoo(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    P, r, n = 60, 3, 512
    basis = torch.randn(r, P, generator=g)
    low_rank = torch.randn(2 * n, r, generator=g) @ basis / r**0.5  # rank 3 < latent 8
    full_rank = torch.randn(2 * n, P, generator=g)  # rank 60 > latent 8: cannot be reconstructed
    kw = dict(latent_dim=8, kind=kind, hidden=64, channels=(8, 16), input_noise=0.0, latent_noise=0.0)
    # relative MSE on vectors not trained on: the 3-D subspace passes through the 8-D code ...
    assert _fit(ParamAutoencoder(P, **kw), low_rank[:n], low_rank[n:]) < 0.02
    # ... isotropic data lose at least 1 - 8/60 of their variance through any 8-D code
    assert _fit(ParamAutoencoder(P, **kw), full_rank[:n], full_rank[n:]) > 0.8


def test_noise_augmentation_draws_from_the_generator():
    ae = ParamAutoencoder(20, latent_dim=4)
    x = torch.randn(8, 20)
    a = ae(x, torch.Generator().manual_seed(3))
    b = ae(x, torch.Generator().manual_seed(3))
    c = ae(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
