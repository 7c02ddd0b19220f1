"""User code named by import path `pkg.module:name`: one lookup for every config key that takes one
(`model:` of `raygen sample`, `task:` of `raygen tune`).

The module is looked for in the given directories first (the process's working directory, which
`raygen submit` ships to the cluster, and the driver's, for a local Ray whose workers started
elsewhere), then among the installed packages. Every mistake is one line naming the config key.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, Callable

from raygen.errors import UserError

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_import_path(value: str) -> bool:
    return bool(IMPORT_PATH.match(value))


def working_dirs() -> tuple[str, ...]:
    """This process's working directory, where an import-path object may live; () when it no longer
    exists (seen in a submitted job, whose working_dir package Ray may remove while the job runs)."""
    try:
        return (os.getcwd(),)
    except FileNotFoundError:
        return ()


def load_object(spec: str, *, key: str, returns: str, search: Sequence[str] = ()) -> Callable[..., Any]:
    """The function `name` of module `pkg.module` (`spec` = "pkg.module:name"), looked for in `search`
    before the installed packages. `key` is the config key that named it and `returns` what the
    function must return, both for the error messages."""
    if not is_import_path(spec):
        raise UserError(f"config key '{key}': {spec!r} is not an import path pkg.module:function")
    module_name, attr = spec.split(":")
    added = [d for d in search if d not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise UserError(f"config key '{key}': importing {module_name!r} for {spec!r} needs {exc.name!r}, which is "
                            "not installed; install it where raygen runs") from None
        where = ", ".join(search) or "the working directory"
        raise UserError(f"config key '{key}': cannot import {module_name!r} for {spec!r}: no such module in "
                        f"{where} or the installed packages; put {module_name.replace('.', '/')}.py in the job's "
                        "working directory, or install its package") from None
    except SyntaxError as exc:
        raise UserError(f"config key '{key}': {exc.filename}, line {exc.lineno}: {exc.msg}; fix the module "
                        f"{module_name!r}") from None
    except Exception as exc:  # the module's own top-level code failed: its error, on one line
        raise UserError(f"config key '{key}': importing {module_name!r} for {spec!r} failed: "
                        f"{type(exc).__name__}: {exc}") from None
    finally:
        for d in added:
            sys.path.remove(d)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"config key '{key}': {module_name} has no function {attr!r} ({spec!r}); name a function "
                        f"that returns {returns}")
    return factory
