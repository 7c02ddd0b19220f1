"""The latent sampler with an exact Gaussian denoiser reproduces the Gaussian; the vector
denoiser plugs into raygen's EDM loss; samples depend only on their own seeds."""

import torch

from raygen.diffusion.losses import DenoisingLoss
from raygen.sampling import Gaussian, compare_to_truth
from raygen.weightgen.latent import VectorDenoiser, as_rows, latent_loss, sample_latents


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
