"""Where Ray runs: an embedded local Ray by default, a cluster with `--address` or `RAY_ADDRESS`.

raygen code calls `init()` instead of `ray.init()`. It keeps Ray's own log noise out of the way
(warnings and errors only unless verbose) and turns a connection failure into one clear line.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

from raygen.errors import UserError

# Ray >= 2.4x warns on every start about a future default; the old behaviour is what we want.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Workers must see the same cwd-relative paths as the driver (Train/Tune change it by default).
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")


def init(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None) -> None:
    """Start (no address, no RAY_ADDRESS) or join (`auto`, `host:port`, `ray://...`) Ray; idempotent."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:  # checked even when Ray is already up in this process: a bad address is refused
        check_reachable(address)
    imported = sys.modules.get("ray")
    token_too_late = False
    # Ray reads RAY_AUTH_MODE when it is imported: set later, a token cluster refuses the driver.
    # Only for a connection about to be made: it stays in this process's environment.
    if address is not None and not (imported and imported.is_initialized()):
        token_too_late = use_token_auth_if_found() and imported is not None
    # torch first: loaded after ray.init inside a submitted job's working_dir, its oneMKL failed to
    # load libtorch_cpu.so ("Intel oneMKL FATAL ERROR") in most runs; loaded before, it never did.
    import torch  # noqa: F401, I001 - must come first (see above)
    import ray
    import ray.data  # configures Ray Data's loggers on import; the levels below must come after

    if not verbose:
        quiet_libraries()
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.WARNING
    for name in ("ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    # Ray Data logs a failed task's traceback itself and logs progress in non-terminals; raygen
    # re-raises failures as one clear line and prints its own progress.
    logging.getLogger("ray.data").setLevel(level if verbose else logging.CRITICAL)
    # Tune's "operation took 0.9 s, may be a performance bottleneck" lines measure a loaded driver, not the job.
    logging.getLogger("ray.tune.utils.util").setLevel(level if verbose else logging.ERROR)
    # Token auth is on by default since Ray 2.60: say so only when asked.
    logging.getLogger("ray._private.authentication").setLevel(level if verbose else logging.ERROR)
    kwargs = dict(logging_level=level, log_to_driver=verbose, configure_logging=True)
    if address is None:
        # "local" always starts a fresh embedded Ray; None would join any `ray start` cluster on this host.
        kwargs.update(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    global _embedded
    _embedded = address is None
    try:
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        if address is None:
            raise
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fix = ("export RAY_AUTH_MODE=token before Python starts (Ray was imported before raygen could set it)"
               if token_too_late else "check the address, or start a cluster with `cluster/local.sh up`, or "
               "drop --address to use a local Ray")
        raise UserError(f"could not connect to Ray at {address!r} ({first_line}); {fix}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = verbose
    ctx.enable_progress_bars = verbose


def quiet_libraries() -> None:
    """A default run shows raygen's own lines only; `-v` keeps everything below."""
    import warnings

    # Tune's new console output ignores RunConfig(verbose=0); the classic one honours it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    _drop_stderr_lines(CORE_WORKER_NOISE)
    # Library advice (e.g. Ray Data: "actor pool larger than its inputs") is for Ray developers.
    for module in ("ray", "torch", "accelerate", "sklearn", "optuna"):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")


# Lines the driver's C++ core worker writes straight to fd 2 on normal runs: Ray Data's actor
# pools keep their constructor arguments in the object store with restarts on (ray#53727).
CORE_WORKER_NOISE = (re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments"),)
_filtering = False


def _drop_stderr_lines(patterns) -> None:
    """Route fd 2 through a pipe whose reader forwards every line except those matching `patterns`.

    C++ writes bypass Python's logging, so this is the only place to drop them; each such line is
    one write() (shorter than PIPE_BUF), so lines never arrive split. Everything else (raygen's
    progress, tracebacks, fatal Ray errors) passes unchanged.
    """
    global _filtering
    if _filtering:
        return
    _filtering = True
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        while chunk := os.read(read_end, 65536):
            kept = b"".join(line for line in chunk.splitlines(keepends=True)
                            if not any(p.search(line) for p in patterns))
            if kept:
                os.write(original, kept)

    thread = threading.Thread(target=forward, name="raygen-stderr", daemon=True)
    thread.start()

    def drain() -> None:  # at exit: let the reader forward what is still in the pipe
        sys.stderr.flush()
        os.dup2(original, 2)
        thread.join(timeout=2)

    atexit.register(drain)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line unless host:port answers as a Ray GCS / client server (gRPC).

    `ray.init` against a closed port retries for minutes, and against an open port that is not
    Ray (most often the dashboard's HTTP port) it hangs and ignores SIGTERM: both are refused here.
    """
    import socket
    from urllib.parse import urlsplit

    if address == "auto" or address.startswith("local"):
        return
    hint = ("check the address, or start a cluster with `cluster/local.sh up`, or drop --address to use a "
            "local Ray")
    if address.startswith(("http://", "https://")):
        raise UserError(f"{address!r} is an HTTP (dashboard / job API) address; `raygen run --address` joins "
                        "the GCS (HOST:6379 or ray://HOST:10001); to send a job over HTTP use `raygen submit`")
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    if parts.hostname is None or parts.port is None:
        raise UserError(f"Ray address {address!r} is not of the form host:port, ray://host:port or auto")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as conn:
            answer = _http2_answer(conn, timeout_s)
    except OSError as exc:
        raise UserError(f"could not connect to Ray at {address!r} ({exc.strerror or exc}); {hint}") from None
    if answer is None or not answer.startswith(b"HTTP2"):
        what = "an HTTP/1 server (the dashboard?)" if answer and answer.startswith(b"HTTP/") else "not a Ray server"
        raise UserError(f"{address!r} answers but is {what}; `raygen run --address` needs the GCS port "
                        f"(HOST:6379) or the client port (ray://HOST:10001); {hint}")


def _http2_answer(conn, timeout_s: float) -> bytes | None:
    """Send the HTTP/2 preface and an empty SETTINGS frame; b"HTTP2" if a SETTINGS frame comes back,
    else the first bytes received (None on silence). Ray's GCS and client servers speak gRPC."""
    conn.settimeout(timeout_s)
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    try:
        head = conn.recv(9)
    except (TimeoutError, OSError):
        return None
    if len(head) == 9 and head[3] == 4:  # frame type 4 = SETTINGS
        return b"HTTP2"
    return head or None


def use_token_auth_if_found() -> bool:
    """Joining a token-protected cluster needs RAY_AUTH_MODE=token in this process; set it when a
    token is found the standard ways (as `raygen submit` finds it), before Ray is imported (Ray
    reads it then). True when it was set here."""
    from raygen.auth import find_token

    if "RAY_AUTH_MODE" not in os.environ and find_token() is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        return True
    return False


_embedded = False  # True when init() started the local Ray itself (no autoscaler can add nodes)


def check_fits(demand: dict[str, float], keys: str) -> None:
    """Refuse a per-task / per-actor resource request that no node has, instead of waiting forever.

    `demand` is one unit's request, e.g. {"CPU": 4} for one sampling actor; `keys` names the
    config keys that set it. On the embedded local Ray nothing can appear later, so it is an
    error; on a cluster an autoscaler may add a larger node, so it is said once and then waited for.
    """
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    wanted = {k: v for k, v in demand.items() if v > 0}
    if any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in nodes):
        return
    largest = ", ".join(f"{k} {max((node.get(k, 0) for node in nodes), default=0):g}" for k in wanted)
    asked = ", ".join(f"{k} {v:g}" for k, v in wanted.items())
    if _embedded:
        raise UserError(f"{keys} asks for {asked} per unit but this machine has {largest}; change {keys} "
                        "(or run on a cluster with such nodes via --address)")
    print(f"waiting: {keys} asks for {asked} per unit and no node has that yet (largest: {largest}); "
          "an autoscaler must add one", file=sys.stderr, flush=True)


def shutdown() -> None:
    import ray

    global _embedded
    _embedded = False
    if ray.is_initialized():
        ray.shutdown()


def num_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))
