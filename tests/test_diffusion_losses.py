import pytest
import torch

from raygen.diffusion import EMA, DenoisingLoss, heun_sample, karras_sigmas


def gaussian_denoiser(m, s):
    """Exact posterior mean E[x | x_tilde] for data N(m, s^2 I): m + s^2/(s^2 + sigma^2) (x_tilde - m)."""
    def D(x_tilde, sigma, labels=None):
        sigma = torch.as_tensor(sigma, dtype=x_tilde.dtype).reshape(-1, *([1] * (x_tilde.dim() - 1)))
        return m + s**2 / (s**2 + sigma**2) * (x_tilde - m)
    return D


def test_edm_weighted_loss_of_exact_denoiser_is_one_per_dimension():
    # with sigma_data = s, w(sigma) * E||D* - x||^2 / d = 1 for every sigma (closed form)
    m, s = 0.3, 0.4
    g = torch.Generator().manual_seed(0)
    x0 = m + s * torch.randn(20000, 1, 2, 2, generator=g, dtype=torch.float64)
    loss_fn = DenoisingLoss(sigma_data=s)
    loss, x_hat = loss_fn(gaussian_denoiser(m, s), x0, g)
    assert abs(loss.item() - 1.0) < 0.03
    assert x_hat.shape == x0.shape
    # a worse denoiser (return x_tilde unchanged) has a clearly larger loss
    worse, _ = loss_fn(lambda x, sigma, labels: x, x0, g)
    assert worse.item() > 1.5


def test_loss_on_vectors_matches_the_image_view():
    # sigma broadcasts per sample for any data shape: [B, D] gives the loss of the [B, 1, 1, D] view
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x0 = 0.3 + 0.4 * torch.randn(64, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flat, _ = DenoisingLoss(sigma_data=0.4)(gaussian_denoiser(0.3, 0.4), x0, g0)
    rows, _ = DenoisingLoss(sigma_data=0.4)(gaussian_denoiser(0.3, 0.4), x0[:, None, None, :], g1)
    torch.testing.assert_close(flat, rows)


def test_at_scale_makes_the_loss_invariant_to_the_data_scale():
    # data a*x with sigma_data a*s: sigma/sigma_data has the same distribution, so with the same
    # random draws the weighted loss of the exact denoiser is the same number
    m, s, a = 0.2, 0.5, 4.0
    x0 = m + s * torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = DenoisingLoss.at_scale(s)
    assert (base.p_mean, base.p_std) == (-1.2, 1.2)  # EDM's own values at its sigma_data = 0.5
    small, _ = base(gaussian_denoiser(m, s), x0, torch.Generator().manual_seed(1))
    big, _ = DenoisingLoss.at_scale(a * s)(gaussian_denoiser(a * m, a * s), a * x0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(small, big)
    # the unshifted EDM distribution on the scaled data is a different loss (the check can fail)
    plain, _ = DenoisingLoss(sigma_data=a * s)(lambda x, sigma, labels: x, a * x0, torch.Generator().manual_seed(1))
    shifted, _ = DenoisingLoss.at_scale(a * s)(lambda x, sigma, labels: x, a * x0, torch.Generator().manual_seed(1))
    assert abs(plain.item() - shifted.item()) > 0.1


def test_label_dropout_rate_and_unconditional_labels():
    seen = {}

    def D(x, sigma, labels):
        seen["labels"] = labels
        return x

    x0 = torch.zeros(4000, 1, 2, 2)
    labels = torch.arange(4000) % 10
    DenoisingLoss(num_classes=10, label_dropout=0.3)(D, x0, torch.Generator().manual_seed(0), labels)
    dropped = (seen["labels"] == 10).float().mean().item()
    assert abs(dropped - 0.3) < 0.03
    kept = seen["labels"] != 10
    assert torch.equal(seen["labels"][kept], labels[kept])
    DenoisingLoss(num_classes=0)(D, x0, torch.Generator().manual_seed(0), labels)
    assert seen["labels"] is None


def test_heun_sampler_maps_noise_to_gaussian_data():
    # exact denoiser of N(m, s^2): the PF-ODE from N(m, sigma_max^2) ends at std sigma_max*s/sqrt(s^2+sigma_max^2)
    m, s, smax = 0.5, 0.3, 5.0
    x = heun_sample(gaussian_denoiser(m, s), (4000, 1, 2, 2), torch.Generator().manual_seed(1), num_steps=18,
                    sigma_max=smax, data_mean=m)
    expected_std = smax * s / (s**2 + smax**2) ** 0.5
    assert abs(x.mean().item() - m) < 0.01
    assert abs(x.std().item() - expected_std) < 0.01


def test_heun_sampler_from_given_start_equals_drawn_start():
    m, s, smax = 0.5, 0.3, 5.0
    D = gaussian_denoiser(m, s)
    drawn = heun_sample(D, (8, 3), torch.Generator().manual_seed(2), num_steps=6, sigma_max=smax, data_mean=m)
    start = m + smax * torch.randn((8, 3), generator=torch.Generator().manual_seed(2))
    given = heun_sample(D, None, None, num_steps=6, sigma_max=smax, data_mean=m, x_init=start)
    torch.testing.assert_close(given, drawn)
    with pytest.raises(ValueError, match="either shape and generator, or x_init"):
        heun_sample(D, (8, 3), torch.Generator(), x_init=start)


def test_karras_sigmas_endpoints_and_order():
    sig = karras_sigmas(10, 0.002, 5.0)
    assert torch.allclose(sig[[0, -1]], torch.tensor([5.0, 0.002], dtype=torch.float64))
    assert (sig[1:] < sig[:-1]).all()


def test_ema_matches_closed_form_average():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    expected = 0.0
    for n, w in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert abs(ema.model.weight.item() - expected) < 1e-6
    # state round trip
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 4 and other.decay == 0.5
    assert other.model.weight.item() == ema.model.weight.item()
