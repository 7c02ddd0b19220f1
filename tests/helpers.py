"""Helpers shared by several test modules (test modules never import each other)."""

import socket

# The main job at minimal sizes: finishes in about a minute on 2 cores.
QUICKSTART_TINY = ["train_steps=20", "sadm_warmup=5", "n_samples=100", "levels=2", "steps_per_level=1",
                   "chunk_size=50", "ratios=[0, 0.1]", "seeds=[0]", "epochs=2", "feature_steps=20"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
