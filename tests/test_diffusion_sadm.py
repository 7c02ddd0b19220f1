import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raygen.diffusion import (
    EMA,
    DenoisingLoss,
    StructureEncoder,
    adversarial_loss,
    affinity,
    discriminator_loss,
    lambda_at,
    structure_distance,
)
from raygen.diffusion.train import SADMStep, sadm_step
from raygen.models import Denoiser
from raygen.train_loop import TrainState
from raygen.train_loop import seeded as _seeded


def test_affinity_and_distance_closed_form():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)
    r = 2**-0.5
    A = torch.tensor([[1, 0, r], [0, 1, r], [r, r, 1]], dtype=torch.float64)
    assert torch.allclose(affinity(z), A)
    # flip the second vector: cosines with it change sign
    w = z * torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64)
    # off-diagonal differences: (0,2),(2,0) unchanged; (0,1),(1,0) 0; (1,2),(2,1) 2r each
    assert torch.allclose(structure_distance(z, w), torch.tensor(2 * (2 * r) ** 2 / 6, dtype=torch.float64))
    # invariant to per-row rescaling, zero for identical structure
    assert structure_distance(z, 5 * z).item() < 1e-12


def test_lambda_warmup():
    assert lambda_at(0, 0.2, 100) == 0.0
    assert lambda_at(50, 0.2, 100) == pytest.approx(0.1)
    assert lambda_at(500, 0.2, 100) == 0.2
    assert lambda_at(0, 0.2, 0) == 0.2


def test_adversarial_loss_freezes_encoder():
    enc = _seeded(0, lambda: StructureEncoder(1, embed_dim=8))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8, generator=g)
    x_hat = torch.rand(6, 1, 8, 8, generator=g).requires_grad_(True)
    adversarial_loss(enc, x0, x_hat).backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.requires_grad for p in enc.parameters())


def _run(lam, steps, *, with_disc):
    """Train a tiny denoiser on fixed data; plain loop (no discriminator at all) when with_disc is False."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = _seeded(0, lambda: Denoiser("tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = EMA(model, 0.9)
    loss_fn = DenoisingLoss()
    gen = torch.Generator().manual_seed(123)
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    if with_disc:
        enc = _seeded(1, lambda: StructureEncoder(1, embed_dim=16))
        opt_phi = torch.optim.Adam(enc.parameters(), lr=1e-3)
        state = TrainState(modules={"denoiser": model, "encoder": enc}, optimizers={"opt": opt, "opt_phi": opt_phi},
                           emas={"denoiser": ema}, generator=gen)
        ctx = SADMStep(acc, loss_fn, disc_steps=1, grad_clip=1.0)
    for _ in range(steps):
        if with_disc:
            sadm_step(ctx, state, x0, None, lam)
        else:
            loss, _ = loss_fn(model, x0, gen)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), gen.get_state()


def test_lambda_zero_reproduces_plain_training_exactly():
    w_plain, rng_plain = _run(0.0, 3, with_disc=False)
    w_sadm0, rng_sadm0 = _run(0.0, 3, with_disc=True)
    assert torch.equal(w_plain, w_sadm0)
    assert torch.equal(rng_plain, rng_sadm0)  # the discriminator drew nothing from the denoiser's stream
    w_sadm, _ = _run(0.5, 3, with_disc=True)
    assert not torch.allclose(w_plain, w_sadm)


# --- the structure spans the global batch under data parallelism --------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    # per-image offsets spread the embeddings, so the affinities differ visibly between sub-batches
    g = torch.Generator().manual_seed(0)
    offsets = torch.linspace(-3, 3, 8, dtype=torch.float64).view(8, 1, 1, 1)
    x0 = 2 * torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64) + offsets
    return x0, 2 * torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64) - offsets.flip(0)


def _losses_and_grads(x0, x_noisy):
    """Discriminator loss + encoder grads, adversarial loss + grad of a 'denoiser' parameter theta."""
    enc = _seeded(0, lambda: StructureEncoder(1, width=8, embed_dim=8).double())
    theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    d_loss = discriminator_loss(enc, x0, theta.detach() * x_noisy)
    d_loss.backward()
    a_loss = adversarial_loss(enc, x0, theta * x_noisy)
    a_loss.backward()
    grads = torch.cat([p.grad.flatten() for p in enc.parameters()] + [theta.grad.reshape(1)])
    return torch.stack([d_loss.detach(), a_loss.detach()]), grads


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x0, x_noisy = _batch()
    part = slice(rank * 4, rank * 4 + 4)
    losses, grads = _losses_and_grads(x0[part], x_noisy[part])
    dist.all_reduce(grads)  # what DDP does: average parameter gradients over ranks
    grads /= world
    if rank == 0:
        torch.save((losses, grads), out)
    dist.destroy_process_group()


def test_two_gloo_workers_match_one_process_on_concatenated_batch(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    losses2, grads2 = torch.load(out)
    losses1, grads1 = _losses_and_grads(*_batch())
    assert torch.allclose(losses2, losses1, rtol=1e-12, atol=1e-14)
    assert torch.allclose(grads2, grads1, rtol=1e-9, atol=1e-12)
    # and a per-worker structure (no gather) would differ: the test can fail
    half = _losses_and_grads(*(t[:4] for t in _batch()))[0]
    assert not torch.allclose(half, losses1)


# --- the same for the gated (JS) and distribution-level (MMD) forms ------------------------------

def _new_forms(x0, x_noisy):
    """Per form: (losses, grads) of the encoder's critic loss and of a toy denoiser's total loss.

    The toy denoiser is one 3x3 conv (its weight W is the output layer that sets the adaptive lambda);
    its loss is mean((D(x_noisy) - x0)^2) over the local rows, as under DDP."""
    from raygen.diffusion.structure import (SpectralEncoder, gated_structure_term, js_critic_loss,
                                            mmd_critic_loss, mmd_structure_term)

    out = []
    for form in ("gated", "mmd"):
        enc = _seeded(0, lambda: SpectralEncoder(1, width=8, embed_dim=8).double())
        conv = _seeded(1, lambda: torch.nn.Conv2d(1, 1, 3, padding=1).double())
        denoise = lambda x, sigma, labels: conv(x)  # noqa: E731
        loss_d = (denoise(x_noisy, None, None) - x0).pow(2).mean()
        if form == "gated":
            critic = js_critic_loss(enc, x0, denoise(x0 + 0.1 * x_noisy, None, None))
            critic.backward()
            term, logs = gated_structure_term(denoise, enc, x0, None, loss_d, conv.weight, sigma=0.1, eps=x_noisy,
                                              sigma_data=0.5, ratio=0.3)
            extra = torch.tensor(logs["lambda_t"], dtype=torch.float64)
        else:
            critic = mmd_critic_loss(enc, x0, denoise(x_noisy, None, None))
            critic.backward()
            term = mmd_structure_term(enc, x0, denoise(x_noisy, None, None))
            extra = term.detach()
        (loss_d + term).backward()
        grads = torch.cat([p.grad.flatten() for p in enc.parameters()] + [p.grad.flatten() for p in conv.parameters()])
        out.append((torch.stack([critic.detach(), extra]), grads))
    return out


def _worker_new_forms(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x0, x_noisy = _batch()
    part = slice(rank * 4, rank * 4 + 4)
    results = _new_forms(x0[part], x_noisy[part])
    for _, grads in results:
        dist.all_reduce(grads)
        grads /= world
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_gated_and_mmd_forms_two_gloo_workers_match_one_process(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker_new_forms, args=(2, _free_port(), out), nprocs=2, join=True)
    two = torch.load(out)
    one = _new_forms(*_batch())
    for (l2, g2), (l1, g1) in zip(two, one):
        assert torch.allclose(l2, l1, rtol=1e-10, atol=1e-14)  # critic loss and lambda (gated) / MMD^2
        assert torch.allclose(g2, g1, rtol=1e-8, atol=1e-12)
    half = _new_forms(*(t[:4] for t in _batch()))
    assert not torch.allclose(half[0][0], one[0][0]) and not torch.allclose(half[1][0], one[1][0])


# --- the gated form in the trainer's step; init_from --------------------------------------------

def test_gated_form_lambda_zero_is_plain_and_nonzero_trains_differently():
    from accelerate import Accelerator

    from raygen.diffusion.structure import SpectralEncoder

    def run(ratio):
        model = _seeded(0, lambda: Denoiser("tiny"))
        enc = _seeded(1, lambda: SpectralEncoder(1, width=8, embed_dim=8))
        gen = torch.Generator().manual_seed(123)
        state = TrainState(modules={"denoiser": model, "encoder": enc},
                           optimizers={"opt": torch.optim.Adam(model.parameters(), lr=1e-3),
                                       "opt_phi": torch.optim.Adam(enc.parameters(), lr=1e-3)},
                           emas={"denoiser": EMA(model, 0.9)}, generator=gen)
        step = SADMStep(Accelerator(cpu=True), DenoisingLoss(), ratio, 0, grad_clip=1.0, sadm_form="gated")
        x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(7))
        logs = [step(state, (x0, None), i) for i in range(3)]
        return torch.cat([p.detach().flatten() for p in model.parameters()]), gen.get_state(), logs

    w_plain, rng_plain = _run(0.0, 3, with_disc=False)
    w0, rng0, _ = run(0.0)
    assert torch.equal(w_plain, w0) and torch.equal(rng_plain, rng0)
    w1, rng1, logs = run(0.3)
    assert torch.equal(rng_plain, rng1)  # the structure batches draw from their own stream
    assert not torch.allclose(w_plain, w1)
    assert all(0.02 <= row["structure_sigma"] <= 0.5 and row["lambda_t"] > 0 for row in logs)


def test_init_from_loads_denoiser_ema_and_optimizer_exactly(tmp_path):
    from raygen.diffusion.train import init_from, train_func
    from raygen.errors import UserError

    train_func(dict(name="base", storage_path=str(tmp_path), steps=2, batch_size=8, sadm_lambda=0.0,
                    sample_every=0, log_every=1, checkpoint_every=2))
    ckpt = tmp_path / "base" / "checkpoint_000002"
    saved = torch.load(ckpt / "state.pt", weights_only=True)
    model = _seeded(5, lambda: Denoiser("tiny", sample_shape=(1, 8, 8)))
    enc = _seeded(6, lambda: StructureEncoder(1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    state = TrainState(modules={"denoiser": model, "encoder": enc},
                       optimizers={"opt": opt, "opt_phi": torch.optim.Adam(enc.parameters())},
                       emas={"denoiser": EMA(model, 0.999)}, generator=torch.Generator())
    init_from(state, str(ckpt))
    for k, v in saved["modules"]["denoiser"].items():
        assert torch.equal(model.state_dict()[k], v)
    for k, v in saved["emas"]["denoiser"]["model"].items():
        assert torch.equal(state.emas["denoiser"].model.state_dict()[k], v)
    assert state.emas["denoiser"].num_updates == saved["emas"]["denoiser"]["num_updates"] == 2
    for i, s in saved["optimizers"]["opt"]["state"].items():
        assert torch.equal(opt.state_dict()["state"][i]["exp_avg"], s["exp_avg"])
    # the discriminator and the step start fresh
    assert not torch.equal(enc.state_dict()["net.0.weight"], saved["modules"]["encoder"]["net.0.weight"])
    assert state.step == 0
    with pytest.raises(UserError, match="init_from"):
        init_from(state, str(tmp_path / "missing"))
    with pytest.raises(UserError, match="does not fit"):
        small = _seeded(0, lambda: Denoiser("small"))
        init_from(TrainState(modules={"denoiser": small, "encoder": enc},
                             optimizers={"opt": torch.optim.Adam(small.parameters()), "opt_phi": opt},
                             emas={"denoiser": EMA(small)}, generator=torch.Generator()), str(ckpt))
