"""The latent sampler with an exact Gaussian denoiser reproduces the Gaussian; the vector
denoiser plugs into raygen's EDM loss; samples depend only on their own seeds."""

import torch

from raygen.diffusion.losses import DenoisingLoss, sample_sigma
from raygen.sampling import Gaussian, compare_to_truth
from raygen.weightgen.latent import LatentScale, VectorDenoiser, as_rows, latent_loss, sample_latents


def _gaussian():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    A = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.3, 0.2, 0.4]], dtype=torch.float64)
    return Gaussian(mean, A @ A.T)


def _exact_denoiser(target):
    def D(x, sigma, cond):  # E[h | h + sigma eps] in closed form, in the [B, 1, 1, D] view
        mu, _ = target.posterior_moments(x[:, 0, 0, :], float(sigma))
        return as_rows(mu)
    return D


def test_sampler_with_exact_denoiser_reproduces_gaussian_mean_and_cov():
    target = _gaussian()
    n = 4000
    h = sample_latents(_exact_denoiser(target), 3, list(range(n)), dtype=torch.float64, num_steps=40)
    stats = compare_to_truth(target, h, generator=torch.Generator().manual_seed(0))
    # sampling error of the mean ~ sqrt(tr C / n) = 0.026; of the covariance ~ sqrt(2/n) = 0.02
    assert stats["mean_error"] < 0.08
    assert stats["cov_error"] < 0.08
    # too few steps leave the ODE far from the data distribution: the check can fail
    crude = compare_to_truth(target, sample_latents(_exact_denoiser(target), 3, list(range(n)),
                                                    dtype=torch.float64, num_steps=2),
                             generator=torch.Generator().manual_seed(0))
    assert crude["cov_error"] > 0.2 or crude["mean_error"] > 0.2


def test_a_sample_depends_only_on_its_seed():
    target = _gaussian()
    all_ = sample_latents(_exact_denoiser(target), 3, [5, 6, 7, 8], dtype=torch.float64)
    some = sample_latents(_exact_denoiser(target), 3, [7, 5], dtype=torch.float64)
    assert torch.equal(some[0], all_[2]) and torch.equal(some[1], all_[0])


def test_vector_denoiser_with_condition_trains_with_edm_loss():
    torch.manual_seed(0)
    model = VectorDenoiser(dim=4, cond_dim=3, hidden=32, depth=1)
    h0, cond = torch.randn(16, 4), torch.randn(16, 3)
    x = torch.randn(5, 1, 1, 4)
    # zero-initialised output layer: D = c_skip h, so the denoiser starts as the Gaussian-prior shrinkage
    c_skip = 1.0 / (0.5**2 + 1.0)
    torch.testing.assert_close(model(x, 0.5, cond[:5]), c_skip * x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):  # the second step's gradient reaches the condition embedding
        opt.zero_grad()
        loss = latent_loss(DenoisingLoss(sigma_data=1.0), model, h0, cond, torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and model.net.c_emb[0].weight.grad.abs().sum() > 0


def test_noise_levels_follow_each_latent_dimensions_std():
    # latents with exactly known, unequal per-dimension stds 0.1, 1, 10 (and means -1, 0, 5)
    std, mean = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64), torch.tensor([-1.0, 0.0, 5.0], dtype=torch.float64)
    base = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], dtype=torch.float64)
    h = mean + std * base  # each column: mean 0, population std exactly 1 in `base`
    scale = LatentScale.fit(h)
    torch.testing.assert_close(scale.std, std)
    torch.testing.assert_close(scale.mean, mean)
    z = scale.whiten(h)
    torch.testing.assert_close(z.std(0, correction=0), torch.ones(3, dtype=torch.float64))
    # the sigmas and noise the loss draws (its fixed order: sigma, then noise, from one generator)
    g = torch.Generator().manual_seed(3)
    sigma = sample_sigma(4, DenoisingLoss.at_scale(1.0).p_mean, DenoisingLoss.at_scale(1.0).p_std, g, torch.float64)
    eps = torch.randn((4, 1, 1, 3), generator=g, dtype=torch.float64)[:, 0, 0, :]
    seen = []

    def D(x, s, cond):
        seen.append(x[:, 0, 0, :].clone())
        return x
    latent_loss(DenoisingLoss.at_scale(1.0), D, z, None, torch.Generator().manual_seed(3))
    noise = scale.unwhiten(seen[0]) - h  # in latent units
    torch.testing.assert_close(noise, sigma[:, None] * eps * std)  # sigma_d = sigma * std_d, exactly
    # one scalar scale (latent_scale: scalar) adds the same sigma to every dimension: it fails the check
    seen.clear()
    latent_loss(DenoisingLoss.at_scale(float(h.std())), D, h, None, torch.Generator().manual_seed(3))
    scalar = seen[0] - h
    assert not torch.allclose(scalar, sigma[:, None] * eps * std)
    torch.testing.assert_close(scalar[:, 0] / eps[:, 0], scalar[:, 2] / eps[:, 2])  # same level in dims of std 0.1 and 10


def test_the_denoiser_records_its_scale_and_old_checkpoints_load_unscaled():
    model = VectorDenoiser(dim=3, latent_mean=[-1.0, 0.0, 5.0], latent_std=[0.1, 1.0, 10.0])
    again = VectorDenoiser(**model.spec)
    z = torch.tensor([[1.0, 1.0, 1.0]])
    torch.testing.assert_close(again.to_latents(z), torch.tensor([[-0.9, 1.0, 15.0]]))
    old = VectorDenoiser(**{"dim": 3, "cond_dim": 0, "hidden": 8, "depth": 1, "sigma_data": 2.0, "data_mean": 0.3})
    assert "latent_std" not in old.spec and torch.equal(old.to_latents(z), z)
