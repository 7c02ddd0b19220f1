"""Every random stream in raygen comes from (run seed, stream id, indices), by one rule.

Two streams never share draws, a stream's draws never depend on how work is split (batch size,
actor count, worker count), and one table says which stream is which:

| id | stream          | indices            | used for                                                 |
|----|-----------------|--------------------|----------------------------------------------------------|
| 0  | INIT            | rank               | a trainer's per-rank torch generator (noise, dropout)    |
| 1  | DATA_ORDER      | epoch              | in-memory training data order (built-in digits)          |
| 2  | SHARD_SHUFFLE   | rank, epoch        | Ray Data local shuffle of a training worker's shard      |
| 3  | SAMPLE          | sample id          | one generated sample's noise (`per_item_seeds`)          |
| 4  | SPLIT           | class              | the study's train / held-back / test split               |
| 5  | MIX_DROP        | class              | which training rows a mix replaces                       |
| 6  | MIX_ADD         | class, arm         | which generated / held-back rows replace them            |
| 7  | MIX_ORDER       | id sum, rows       | the order of rows inside a written mix (by batch content)|
| 8  | CORRUPT         | corruption         | the corrupted test sets                                  |
| 9  | SUBSET          | -                  | the capped subsets read for metrics and grids            |
| 10 | MEMBER_ORDER    | task, member seed  | a weight-zoo member's data order                         |
| 11 | MEMBER_INIT     | task, member seed  | a weight-zoo member's initial weights                    |
| 12 | AE_INIT         | rank               | the parameter autoencoder's trainer generator            |
| 13 | LATENT_INIT     | rank               | the latent diffusion's trainer generator                 |
| 14 | RANDOM_INIT     | model index        | the random-init baseline models of the weightgen report  |
| 15 | STRUCTURE       | step (, rank)      | SADM's gated structure batch: its sigma (all ranks), noise |
| 16 | CMT_PANEL       | -                  | the synthetic CMT panel: component laws and draws        |
| 17 | CMT_SPLIT       | target, n, split   | a CMT few-shot split: which target rows train            |
| 18 | CMT_FIT         | target, n, split, g| a CMT trial: g=0 torch (INN init, GCL batches, wrong     |
|    |                 |                    | domains), g=1 numpy (recombination subsets, FastICA)     |
| 19 | GRADVAR         | sub (, step)       | L: [seed, sub, step] gradvar batches (sub 0 train, 1     |
|    |                 |                    | variance, 2 eval), [seed, 3] the digits split; torch:    |
|    |                 |                    | seed (sub 4, SBN init), seed + 1 (sub 5, NVIL nets)      |
| 20 | ZOO_BASE_INIT   | -                  | L: seed      the trajectory zoo's base model init        |
| 21 | ZOO_BASE_ORDER  | -                  | L: seed + 1  the base model's data order                 |
| 22 | TASK_DEF        | task               | L: [seed, task, 7] (numpy) a zoo task's definition       |
| 23 | ZOO_SPLIT       | -                  | L: 0         the zoo data's train/val/test split (fixed) |
| 24 | ENCODER_INIT    | -                  | L: seed + 1  weightgen's set encoder init                |
| 25 | ALIGN_INIT      | -                  | L: seed + 2  weightgen's contrastive heads init           |
| 26 | NOISE_PERTURB   | task               | L: seed + task  the report's noise-perturbed originals   |
| 27 | FINETUNE        | model index        | L: seed + i  a held-out fine-tuning run's data order     |
| 28 | CRITIC_INIT     | -                  | L: seed + 1  SADM's critic (structure encoder) init      |
| 29 | SAMPLE_GRID     | -                  | L: seed      the noise of a trainer's logged sample grid |
| 30 | PREVIEW         | -                  | L: seed      exact target draws of the sampling report   |
| 31 | MODEL_INIT      | -                  | L: seed      a trainer's main model init (SADM denoiser, |
|    |                 |                    |              parameter AE, latent denoiser)              |
| 32 | HPO_TASK        | -                  | L: seed      a bilevel task's data, split and batches    |
| 33 | HPO_INIT        | -                  | L: seed + 1  a bilevel task's MLP initialisation         |
| 34 | SUPPORT_DRAW    | 0, step, rank      | weightgen's re-drawn support sets: a diffusion training  |
|    |                 | 1, vector id       | step's; one generated vector's                           |
| 35 | HPO_SOLVER      | -                  | L: seed      a Tune trial's IHVP solver draws (Nyström    |
|    |                 |                    |              columns, sketches, λ_max start); the key is  |
|    |                 |                    |              HPO_TASK's (a legacy sharing)               |
| 36 | DOWNSTREAM      | -                  | L: seed      a study trial's classifier (init, epoch     |
|    |                 |                    |              order), keyed by the trial's own seed       |
| 37 | FEATURES        | -                  | L: seed      the metrics' feature classifier (init,      |
|    |                 |                    |              batches) and its KID subsets                |

`stream_seed` gives a 63-bit integer (numpy's SeedSequence over the key), `numpy_rng` and
`torch_generator` wrap it. Streams marked L are *legacy* keys, registered as named streams from the
ad-hoc keys (`seed + 1`, `[seed, task, 7]`) raygen used before this rule: their draws are what they
were, so the README's published figures reproduce, at a known cost: a legacy key of run seed s can
equal another legacy key of run seed s + k. A new stream follows the rule. Stream SAMPLE's
derivation is `per_item_seeds`; weightgen's generation draws vector i with it too (the same seed
as sample i of the same run seed: a legacy sharing, kept for the same reason).
`per_item_seeds` is the vectorised form for one seed per item of a huge
id range (10^9 samples): a splitmix64 hash of (run seed, id), so that a sample depends only on its
own id. Algorithms take generators as arguments; only workloads and trainers derive them here.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import numpy as np


class Stream(enum.IntEnum):
    INIT = 0
    DATA_ORDER = 1
    SHARD_SHUFFLE = 2
    SAMPLE = 3
    SPLIT = 4
    MIX_DROP = 5
    MIX_ADD = 6
    MIX_ORDER = 7
    CORRUPT = 8
    SUBSET = 9
    MEMBER_ORDER = 10
    MEMBER_INIT = 11
    AE_INIT = 12
    LATENT_INIT = 13
    RANDOM_INIT = 14
    STRUCTURE = 15
    CMT_PANEL = 16
    CMT_SPLIT = 17
    CMT_FIT = 18
    GRADVAR = 19
    ZOO_BASE_INIT = 20
    ZOO_BASE_ORDER = 21
    TASK_DEF = 22
    ZOO_SPLIT = 23
    ENCODER_INIT = 24
    ALIGN_INIT = 25
    NOISE_PERTURB = 26
    FINETUNE = 27
    CRITIC_INIT = 28
    SAMPLE_GRID = 29
    PREVIEW = 30
    MODEL_INIT = 31
    HPO_TASK = 32
    HPO_INIT = 33
    SUPPORT_DRAW = 34
    HPO_SOLVER = 35
    DOWNSTREAM = 36
    FEATURES = 37


# The legacy keys of the table above: (run seed, *index) -> the key the draws used before.
LEGACY: dict[Stream, Callable[..., int | list[int]]] = {
    Stream.ZOO_BASE_INIT: lambda seed: seed,
    Stream.ZOO_BASE_ORDER: lambda seed: seed + 1,
    Stream.TASK_DEF: lambda seed, task: [seed, task, 7],
    Stream.ZOO_SPLIT: lambda seed: 0,
    Stream.ENCODER_INIT: lambda seed: seed + 1,
    Stream.ALIGN_INIT: lambda seed: seed + 2,
    Stream.NOISE_PERTURB: lambda seed, task: seed + task,
    Stream.FINETUNE: lambda seed, i: seed + i,
    Stream.CRITIC_INIT: lambda seed: seed + 1,
    Stream.SAMPLE_GRID: lambda seed: seed,
    Stream.PREVIEW: lambda seed: seed,
    Stream.MODEL_INIT: lambda seed: seed,
    Stream.HPO_TASK: lambda seed: seed,
    Stream.HPO_INIT: lambda seed: seed + 1,
    Stream.HPO_SOLVER: lambda seed: seed,
    Stream.DOWNSTREAM: lambda seed: seed,
    Stream.FEATURES: lambda seed: seed,
    # subs 0-3 numpy keys [seed, sub, *index]; subs 4, 5 torch inits seed, seed + 1
    Stream.GRADVAR: lambda seed, sub, *index: seed + sub - 4 if sub >= 4 else [seed, sub, *index],
}


def stream_seed(seed: int, stream: Stream, *index: int) -> int:
    """A 63-bit seed for stream `stream` of run seed `seed` at `index` (e.g. rank, epoch)."""
    if stream in LEGACY:
        key = LEGACY[stream](int(seed), *(int(i) for i in index))
        if isinstance(key, int):
            return key
        raise ValueError(f"legacy stream {stream.name} keys numpy generators only (numpy_rng)")
    key = [int(seed), int(stream), *(int(i) for i in index)]
    return int(np.random.SeedSequence(key).generate_state(2, np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, stream: Stream, *index: int) -> np.random.Generator:
    if stream in LEGACY:
        return np.random.default_rng(LEGACY[stream](int(seed), *(int(i) for i in index)))
    return np.random.default_rng(stream_seed(seed, stream, *index))


def torch_generator(seed: int, stream: Stream, *index: int):
    import torch

    return torch.Generator().manual_seed(stream_seed(seed, stream, *index))


def per_item_seeds(seed: int, ids: np.ndarray) -> np.ndarray:
    """Per-item seeds in [0, 2**63): a splitmix64 hash of (run seed, id), vectorised over ids."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + ids.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)
