"""The training scaffold: bit-exact resume (local and in a bucket), NaN stop, checkpoint store rules."""

import json
import shutil

import pytest
import torch

from raygen import storage
from raygen.diffusion import EMA
from raygen.diffusion.train import train_func
from raygen.errors import UserError
from raygen.models import load_denoiser
from raygen.train_loop import TrainState, seeded

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
