"""The training scaffold: bit-exact resume (local and in a bucket), NaN stop, checkpoint store rules.

Most tests go through the SADM trainer; the `linear_train_func` ones use a minimal trainer of their
own, so that what they check is the scaffold (`TrainRun`, `TrainState`, `fit`, `Schedule`) alone."""

import dataclasses
import json
import shutil

import pytest
import torch

from raygen import storage
from raygen.config import Config
from raygen.diffusion import EMA
from raygen.diffusion.train import train_func
from raygen.errors import UserError
from raygen.models import load_denoiser
from raygen.train_loop import Schedule, TrainRun, TrainState, fit, seeded

FAST = dict(batch_size=16, log_every=1, sample_every=0, sadm_warmup=0, sadm_lambda=0.1, checkpoint_every=2)


def _state(directory):
    return torch.load(directory / "state.pt", weights_only=True)


def _assert_same_modules(a, b):
    for key in ("denoiser", "encoder"):
        for name, t in a["modules"][key].items():
            assert torch.equal(t, b["modules"][key][name]), name


def _curve(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_exactly(tmp_path):
    train_func(dict(FAST, name="full", storage_path=str(tmp_path), steps=4))
    train_func(dict(FAST, name="split", storage_path=str(tmp_path), steps=2))
    out = train_func(dict(FAST, name="split", storage_path=str(tmp_path), steps=4, sample_every=4, num_samples=4))
    assert out["resumed_from"] == 2 and out["step"] == 4
    _assert_same_modules(_state(tmp_path / "full/checkpoint_000004"), _state(tmp_path / "split/checkpoint_000004"))
    # the resumed loss curve continues the original, step by step
    full, split = _curve(tmp_path / "full"), _curve(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4]
    assert [r["loss"] for r in full] == [r["loss"] for r in split]
    # keep_checkpoints=2 pruned nothing yet; the checkpoint is a loadable sampler model with a grid
    assert (tmp_path / "split/samples/step_000004.png").exists()
    model = load_denoiser(tmp_path / "split/checkpoint_000004")
    assert model.sample_shape == (1, 8, 8) and model.data_range == (0.0, 1.0)
    assert model.score(torch.rand(2, *model.sample_shape), 0.3).shape == (2, 1, 8, 8)


def test_resume_in_a_bucket_matches_local_training(tmp_path, bucket):
    fast = dict(FAST, checkpoint_every=1)
    train_func(dict(fast, name="local", storage_path=str(tmp_path), steps=2))
    train_func(dict(fast, name="remote", storage_path=bucket, steps=1))
    out = train_func(dict(fast, name="remote", storage_path=bucket, steps=2))
    assert out["resumed_from"] == 1
    ckpt = storage.local_dir_for(storage.join(bucket, "remote", "checkpoint_000002"))
    _assert_same_modules(_state(tmp_path / "local/checkpoint_000002"), _state(ckpt))
    assert load_denoiser(ckpt).sample_shape == (1, 8, 8)
    metrics = storage.read_bytes(storage.resolve(storage.join(bucket, "remote", "metrics.jsonl"))).decode()
    assert [json.loads(line)["loss"] for line in metrics.splitlines()] == [r["loss"] for r in _curve(tmp_path / "local")]
    assert not any(p.name.startswith("s3") for p in tmp_path.parent.iterdir())  # nothing staged under a scheme name


def test_incomplete_checkpoint_is_never_resumed_and_old_ones_are_pruned(tmp_path):
    run = tmp_path / "r"
    train_func(dict(FAST, name="r", storage_path=str(tmp_path), steps=2))
    # a save interrupted after copying its files but before the completion marker
    shutil.copytree(run / "checkpoint_000002", run / "checkpoint_000004")
    (run / "checkpoint_000004" / ".complete").unlink()
    out = train_func(dict(FAST, name="r", storage_path=str(tmp_path), steps=5, checkpoint_every=1))
    assert out["resumed_from"] == 2
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_000004", "checkpoint_000005"]
    assert _state(run / "checkpoint_000004")["step"] == 4  # the interrupted copy was replaced
    state = run / "checkpoint_000005" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # damaged on disk: one line naming the file
    with pytest.raises(UserError, match=r"checkpoint_000005/state.pt is damaged .*delete checkpoint_000005"):
        train_func(dict(FAST, name="r", storage_path=str(tmp_path), steps=6))


def test_a_killed_local_copy_is_never_resumed_and_is_cleaned_up(tmp_path):
    """A worker killed while copying checkpoint 4 into place leaves `checkpoint_000004.tmp-PID`, maybe
    already holding the marker next to a half-written state (CI saw that resumed as 'damaged')."""
    run = tmp_path / "r"
    train_func(dict(FAST, name="r", storage_path=str(tmp_path), steps=2))
    remains = run / "checkpoint_000004.tmp-12345"
    shutil.copytree(run / "checkpoint_000002", remains)
    (remains / "state.pt").write_bytes((remains / "state.pt").read_bytes()[:100])
    assert (remains / ".complete").exists()
    out = train_func(dict(FAST, name="r", storage_path=str(tmp_path), steps=4))
    assert out["resumed_from"] == 2
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_000002", "checkpoint_000004"]


def test_nonfinite_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"loss is (nan|inf) at step \d+") as info:
        train_func(dict(FAST, name="nan", storage_path=str(tmp_path), steps=6, lr=1e30, checkpoint_every=1,
                        grad_clip=0.0))
    step = int(str(info.value).split("at step ")[1].split(";")[0])
    kept = sorted(p.name for p in (tmp_path / "nan").glob("checkpoint_*"))
    assert kept and kept[-1] == f"checkpoint_{step - 1:06d}"
    assert f"(step {step - 1})" in str(info.value)


def _toy_state(seed):
    net = seeded(seed, lambda: torch.nn.Linear(3, 2))
    return TrainState(modules={"net": net}, optimizers={"opt": torch.optim.Adam(net.parameters(), lr=0.1)},
                      emas={"net": EMA(net, 0.9)}, generator=torch.Generator().manual_seed(seed))


def test_train_state_round_trip_restores_everything():
    a = _toy_state(0)
    for _ in range(3):  # move every part away from its initial value
        loss = a.modules["net"](torch.randn(4, 3, generator=a.generator)).pow(2).sum()
        a.optimizers["opt"].zero_grad()
        loss.backward()
        a.optimizers["opt"].step()
        a.emas["net"].update(a.module("net"))
        a.step += 1
    b = _toy_state(1)
    b.load_state_dict(a.state_dict())
    assert b.step == 3 and b.emas["net"].num_updates == 3
    assert torch.equal(b.generator.get_state(), a.generator.get_state())
    for x, y in zip(a.module("net").parameters(), b.module("net").parameters()):
        assert torch.equal(x, y)
    for x, y in zip(a.emas["net"].model.parameters(), b.emas["net"].model.parameters()):
        assert torch.equal(x, y)
    assert torch.equal(a.optimizers["opt"].state_dict()["state"][0]["exp_avg"],
                       b.optimizers["opt"].state_dict()["state"][0]["exp_avg"])
    # a rank the checkpoint did not have keeps its own stream
    c = _toy_state(2)
    c.load_state_dict({k: v for k, v in a.state_dict().items() if k != "generator"})
    assert torch.equal(c.generator.get_state(), torch.Generator().manual_seed(2).get_state())
    other = TrainState(modules={"other": torch.nn.Linear(3, 2)}, optimizers={}, generator=torch.Generator())
    with pytest.raises(UserError, match="modules differ"):
        other.load_state_dict(a.state_dict())


# ------------------------------------------------------------------ a minimal trainer on the scaffold


@dataclasses.dataclass
class LinearConfig(Config):
    RESUME_FREE = frozenset({"steps"})

    steps: int = 6
    lr: float = 0.05
    batch_size: int = 4
    grad_accum: int = 1
    checkpoint_every: int = 2


class Killed(Exception):
    """Stands in for a worker killed mid-run."""


def linear_train_func(config: dict, *, fail_at: int | None = None, bad_loss: float | None = None) -> dict:
    """Least squares with a 3 -> 1 linear net, Adam and an EMA. Batches are random rows drawn from the
    state's generator, and each step adds input noise from it, so a resume is exact only if the
    weights, the optimiser moments, the EMA and the generator all come back. `fail_at`: raise Killed
    during that (0-based) step; `bad_loss`: the loss that step reports instead (NaN / inf)."""
    cfg = LinearConfig.from_dict(config)
    data = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, generator=data)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(32, 1, generator=data)
    run = TrainRun(cfg, keep_checkpoints=2, grad_accum=cfg.grad_accum)
    try:
        restored = run.store.load(run.rank)
        net = seeded(cfg.seed, lambda: torch.nn.Linear(3, 1))
        state = TrainState(modules={"net": net}, optimizers={"opt": torch.optim.Adam(net.parameters(), lr=cfg.lr)},
                           emas={"net": EMA(net, 0.9)}, generator=torch.Generator().manual_seed(cfg.seed))
        if restored is not None:
            state.load_state_dict(restored)
        run.prepare(state)

        def rows():
            while True:
                idx = torch.randint(len(x), (cfg.batch_size,), generator=state.generator)
                yield x[idx], y[idx]

        def step(state, batch, step):
            if step == fail_at and bad_loss is None:
                raise Killed(f"killed in step {step}")
            noisy = batch[0] + 0.01 * torch.randn(batch[0].shape, generator=state.generator)
            loss = torch.nn.functional.mse_loss(state.modules["net"](noisy), batch[1])
            run.accelerator.backward(loss)
            state.optimizers["opt"].step()
            state.optimizers["opt"].zero_grad(set_to_none=True)
            if run.accelerator.sync_gradients:
                state.emas["net"].update(state.module("net"))
            return {"loss": torch.tensor(bad_loss) if step == fail_at else loss.detach()}

        def export(state, directory):
            torch.save(state.module("net").state_dict(), directory / "linear.pt")

        schedule = Schedule(cfg.steps, log_every=1, checkpoint_every=cfg.checkpoint_every, grad_accum=cfg.grad_accum)
        return fit(run, state, rows(), step, schedule, export=export, diverged_hint="lower lr")
    finally:
        run.close()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_minimal_trainer_resumed_after_a_kill_ends_with_the_uninterrupted_weights(tmp_path, grad_accum):
    base = dict(storage_path=str(tmp_path), grad_accum=grad_accum)
    full = linear_train_func(dict(base, name="full"))
    with pytest.raises(Killed):
        linear_train_func(dict(base, name="split"), fail_at=4)  # after checkpoint 4, before 6
    assert sorted(p.name for p in (tmp_path / "split").glob("checkpoint_*")) == ["checkpoint_000002",
                                                                                 "checkpoint_000004"]
    out = linear_train_func(dict(base, name="split"))
    assert full["resumed_from"] is None and out["resumed_from"] == 4 and out["step"] == 6
    a, b = _state(tmp_path / "full/checkpoint_000006"), _state(tmp_path / "split/checkpoint_000006")
    assert a["step"] == b["step"] == 6
    for name, t in a["modules"]["net"].items():
        assert torch.equal(t, b["modules"]["net"][name]), name
    for name, t in a["emas"]["net"]["model"].items():
        assert torch.equal(t, b["emas"]["net"]["model"][name]), name
    assert torch.equal(torch.load(tmp_path / "split/checkpoint_000006/linear.pt")["weight"], a["modules"]["net"]["weight"])
    # the weights moved (a run that restored nothing would not match), and the loss curve continues
    assert not torch.equal(a["modules"]["net"]["weight"], _state(tmp_path / "split/checkpoint_000004")["modules"]["net"]["weight"])
    assert [r["step"] for r in _curve(tmp_path / "split")] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in _curve(tmp_path / "split")] == [r["loss"] for r in _curve(tmp_path / "full")]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_minimal_trainer_stops_on_a_nonfinite_loss_keeping_the_last_good_checkpoint(tmp_path, bad):
    with pytest.raises(UserError, match=rf"loss is {bad} at step 4; lower lr\. The last good checkpoint \(step 2\)"):
        linear_train_func(dict(storage_path=str(tmp_path), name="bad"), fail_at=3, bad_loss=bad)
    assert sorted(p.name for p in (tmp_path / "bad").glob("checkpoint_*")) == ["checkpoint_000002"]
    assert [r["step"] for r in _curve(tmp_path / "bad")] == [1, 2, 3]  # the bad step is not logged
    with pytest.raises(UserError, match=r"loss is nan at step 1; lower lr\. No checkpoint was written yet"):
        linear_train_func(dict(storage_path=str(tmp_path), name="first"), fail_at=0, bad_loss=float("nan"))


def test_a_checkpoint_made_with_other_settings_is_refused_even_when_config_json_was_edited(tmp_path):
    """Reuse follows the settings recorded in the checkpoint: a hand edit of config.json (lr changed
    to match a new --set) no longer lets the old checkpoint pass as one made with the new lr."""
    train_func(dict(FAST, name="r", storage_path=str(tmp_path), steps=2))
    config_file = tmp_path / "r" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "lr": 0.5}))
    with pytest.raises(UserError, match="checkpoint_000002 was made with other settings"):
        train_func(dict(FAST, name="r", storage_path=str(tmp_path), steps=4, lr=0.5))
    out = train_func(dict(FAST, name="r2", storage_path=str(tmp_path), steps=2))  # unedited: resumes as before
    assert _state(tmp_path / "r2" / "checkpoint_000002")["settings"]
    assert out["step"] == 2
