import pytest
import torch

from raygen.models import SIZES, Conditionable, Denoiser, build_denoiser, load_denoiser, save_denoiser
from raygen.sampling import TARGETS
from raygen.models.energy import HasEnergy


def _seeded(seed, fn):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return fn()


@pytest.mark.parametrize("size,channels,hw", [("tiny", 1, 8), ("small", 3, 32)])
def test_sizes_map_images_to_same_shape(size, channels, hw):
    net = SIZES[size](in_channels=channels, num_classes=10)
    x = torch.randn(2, channels, hw, hw, generator=torch.Generator().manual_seed(0))
    assert net(x, torch.zeros(2), torch.tensor([3, 10])).shape == x.shape


def test_preconditioning_limits():
    model = _seeded(0, lambda: Denoiser("tiny").double())
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # sigma -> 0: c_skip -> 1, c_out -> 0, so D is the identity
    assert torch.allclose(model(x, 1e-6), x, atol=1e-5)
    # sigma -> inf: c_skip -> 0, c_out -> sigma_data: D does not grow with the noise
    assert (model(x + 1e4, 1e4) - model.data_mean).abs().max() < 10 * model.sigma_data
    # the score is Tweedie's (D - x) / sigma^2 per sample, for per-sample sigmas
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    expected = (model(x, sigma) - x) / sigma[:, None, None, None] ** 2
    assert torch.allclose(model.score(x, sigma), expected)


def test_energy_gradient_is_score_and_hessian_symmetric():
    model = _seeded(0, lambda: build_denoiser("tiny", energy=True).double())
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64)
    sigma = 0.3
    # central finite differences of the energy along a random direction match -<score, v>
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        fd = (model.energy(x + h * v, sigma) - model.energy(x - h * v, sigma)) / (2 * h)
        s = model.score(x, sigma)
    assert torch.allclose(fd, -(s * v).sum(), rtol=1e-6, atol=1e-9)
    # D = x + sigma^2 score
    assert torch.allclose(model(x, sigma), x + sigma**2 * s)
    # Jacobian of the score (= Hessian of log q) is symmetric: what full-covariance MMDGS needs
    J = torch.autograd.functional.jacobian(lambda y: model.score(y.view(1, 1, 8, 8), sigma).flatten(), x.flatten())
    assert torch.allclose(J, J.T, atol=1e-10)
    # a plain model's Jacobian is not symmetric in general: the test above can fail
    plain = _seeded(0, lambda: Denoiser("tiny").double())
    Jp = torch.autograd.functional.jacobian(lambda y: plain.score(y.view(1, 1, 8, 8), sigma).flatten(), x.flatten())
    assert not torch.allclose(Jp, Jp.T, atol=1e-6)


def test_energy_score_supports_hessian_vector_products():
    model = _seeded(0, lambda: build_denoiser("tiny", energy=True).double())
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    (hv,) = torch.autograd.grad((model.score(x, 0.2) * v).sum(), x)
    J = torch.autograd.functional.jacobian(lambda y: model.score(y.view(1, 1, 8, 8), 0.2).flatten(), x[0].detach().flatten())
    assert torch.allclose(hv[0].flatten(), J @ v[0].flatten(), atol=1e-10)


def test_labels_none_is_null_label_and_guidance():
    model = _seeded(0, lambda: Denoiser("tiny", num_classes=10).double())
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    labels = torch.tensor([1, 2, 3])
    null = torch.full((3,), 10)
    assert torch.equal(model.score(x, 0.5), model.score(x, 0.5, null))
    assert not torch.allclose(model.score(x, 0.5, labels), model.score(x, 0.5))
    cond = model.conditioned(labels, guidance=2.0)
    expected = 3.0 * model.score(x, 0.5, labels) - 2.0 * model.score(x, 0.5, null)
    assert torch.allclose(cond.score(x, 0.5), expected)
    assert not isinstance(cond, HasEnergy) and not isinstance(model, HasEnergy)  # what samplers dispatch on
    energy_cond = _seeded(0, lambda: build_denoiser("tiny", num_classes=10, energy=True)).conditioned(labels)
    assert isinstance(energy_cond, HasEnergy) and energy_cond.energy(x.float(), 0.5).shape == (3,)
    assert isinstance(model, Conditionable) and not isinstance(TARGETS["mog4"](), Conditionable)
    with pytest.raises(ValueError):
        _seeded(0, lambda: Denoiser("tiny")).conditioned(labels)


def test_save_and_load_roundtrip(tmp_path):
    model = _seeded(0, lambda: build_denoiser("tiny", energy=True, num_classes=10))
    save_denoiser(model, model.state_dict(), tmp_path)
    loaded = load_denoiser(tmp_path)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    assert loaded.is_energy and loaded.num_classes == 10
    assert loaded.sample_shape is None and loaded.data_range == (0.0, 1.0)  # built without data: shape unknown
    shaped = build_denoiser("tiny", in_channels=1, sample_shape=(1, 12, 12), data_range=(-1.0, 1.0))
    save_denoiser(shaped, shaped.state_dict(), tmp_path)
    again = load_denoiser(tmp_path)
    assert again.sample_shape == (1, 12, 12) and again.data_range == (-1.0, 1.0)
    with pytest.raises(ValueError, match="sample_shape must be"):
        build_denoiser("tiny", in_channels=1, sample_shape=(3, 12, 12))
    assert torch.equal(loaded.energy(x, 0.3), model.energy(x, 0.3))


def test_load_rejects_non_checkpoint(tmp_path):
    from raygen.errors import UserError

    with pytest.raises(UserError, match="not a raygen denoiser checkpoint"):
        load_denoiser(tmp_path)


class _Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_refuses_a_pickle_and_a_damaged_spec_in_one_line(tmp_path):
    import pickle

    from raygen.errors import UserError

    model = build_denoiser("tiny")
    save_denoiser(model, model.state_dict(), tmp_path)
    marker = tmp_path / "code-ran"
    (tmp_path / "ema.pt").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(UserError, match="ema.pt is damaged or holds pickled objects"):
        load_denoiser(tmp_path)
    assert not marker.exists()
    (tmp_path / "denoiser.json").write_text('{"size": "tiny", ')
    with pytest.raises(UserError, match="denoiser.json is not a denoiser spec .*JSONDecodeError"):
        load_denoiser(tmp_path)
    (tmp_path / "denoiser.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="denoiser.json is not a denoiser spec"):
        load_denoiser(tmp_path)
