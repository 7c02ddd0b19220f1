"""raygen: generative-model research on a Ray cluster.

From Python (`raygen.api`): `raygen.run("sample", n_samples=1000)` -> a Result (run_dir, report,
summary); `raygen.read_samples(result)`, `raygen.read_zoo(...)`, `raygen.read_weights(...)`.
"""

__version__ = "0.1.0"

API = ("run", "Result", "make_config", "read_samples", "sample_metadata", "read_zoo", "read_weights")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    # the API is imported on first use: `raygen --help` and `import raygen.errors` stay light
    if name in API:
        from raygen import api

        return getattr(api, name)
    raise AttributeError(f"module 'raygen' has no attribute {name!r}")
