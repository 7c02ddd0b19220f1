"""One rule for every random stream: independent streams, per-item seeds independent of batching."""

import numpy as np

from raygen.seeds import Stream, numpy_rng, per_item_seeds, stream_seed


def test_per_item_seeds_depend_only_on_seed_and_id():
    ids = np.arange(1000)
    seeds = per_item_seeds(7, ids)
    assert len(set(seeds.tolist())) == 1000 and (seeds >= 0).all()
    np.testing.assert_array_equal(per_item_seeds(7, ids[500:]), seeds[500:])
    assert not np.array_equal(per_item_seeds(8, ids), seeds)


def test_streams_are_distinct_and_keyed_by_seed_stream_and_index():
    seen = {stream_seed(0, s, i) for s in Stream for i in range(5)}
    assert len(seen) == len(Stream) * 5
    assert stream_seed(0, Stream.SPLIT, 3) == stream_seed(0, Stream.SPLIT, 3) != stream_seed(1, Stream.SPLIT, 3)
    # the key is numpy's SeedSequence over [seed, stream, *index] (what trainers used before this module)
    assert stream_seed(5, Stream.DATA_ORDER, 2) == int(
        np.random.SeedSequence([5, 1, 2]).generate_state(2, np.uint64)[0] >> np.uint64(1))
    assert numpy_rng(0, Stream.SUBSET).integers(1 << 30) == numpy_rng(0, Stream.SUBSET).integers(1 << 30)
