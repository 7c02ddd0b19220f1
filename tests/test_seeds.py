"""One rule for every random stream: independent streams, per-item seeds independent of batching."""

import numpy as np

from raygen.seeds import LEGACY, Stream, numpy_rng, per_item_seeds, stream_seed


def test_per_item_seeds_depend_only_on_seed_and_id():
    ids = np.arange(1000)
    seeds = per_item_seeds(7, ids)
    assert len(set(seeds.tolist())) == 1000 and (seeds >= 0).all()
    np.testing.assert_array_equal(per_item_seeds(7, ids[500:]), seeds[500:])
    assert not np.array_equal(per_item_seeds(8, ids), seeds)


def test_streams_are_distinct_and_keyed_by_seed_stream_and_index():
    ruled = [s for s in Stream if s not in LEGACY]  # legacy keys are tested below
    seen = {stream_seed(0, s, i) for s in ruled for i in range(5)}
    assert len(seen) == len(ruled) * 5
    assert stream_seed(0, Stream.SPLIT, 3) == stream_seed(0, Stream.SPLIT, 3) != stream_seed(1, Stream.SPLIT, 3)
    # the key is numpy's SeedSequence over [seed, stream, *index] (what trainers used before this module)
    assert stream_seed(5, Stream.DATA_ORDER, 2) == int(
        np.random.SeedSequence([5, 1, 2]).generate_state(2, np.uint64)[0] >> np.uint64(1))
    assert numpy_rng(0, Stream.SUBSET).integers(1 << 30) == numpy_rng(0, Stream.SUBSET).integers(1 << 30)


def test_legacy_streams_reproduce_the_keys_they_replaced():
    """The L streams of the table draw exactly what the ad-hoc keys drew (README figures reproduce)."""
    import torch

    from raygen.seeds import numpy_rng, stream_seed, torch_generator

    assert [stream_seed(5, s) for s in (Stream.ZOO_BASE_INIT, Stream.ZOO_BASE_ORDER, Stream.ENCODER_INIT,
                                        Stream.ALIGN_INIT, Stream.CRITIC_INIT, Stream.MODEL_INIT)] == [5, 6, 6, 7, 6, 5]
    assert stream_seed(5, Stream.NOISE_PERTURB, 3) == 8 and stream_seed(5, Stream.ZOO_SPLIT) == 0
    assert (stream_seed(5, Stream.HPO_TASK), stream_seed(5, Stream.HPO_INIT)) == (5, 6)
    assert np.array_equal(numpy_rng(5, Stream.TASK_DEF, 3).random(4), np.random.default_rng([5, 3, 7]).random(4))
    assert torch.equal(torch.rand(3, generator=torch_generator(5, Stream.FINETUNE, 2)),
                       torch.rand(3, generator=torch.Generator().manual_seed(7)))
    # a stream under the rule is not a legacy key
    assert stream_seed(5, Stream.MEMBER_ORDER, 0, 0) not in range(100)
