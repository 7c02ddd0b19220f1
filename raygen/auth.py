"""Finding the Ray auth token for the job API (Ray 2.60 token authentication).

Ray 2.60 clusters protect the dashboard/job API with a bearer token. Ray's own client reads it,
in this order, from `RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, then
`~/.ray/auth_token` (checked against ray._raylet.AuthenticationTokenLoader in 2.60). raygen
reads the same sources in the same order and sends the token itself, so that it can say which
source it used when the cluster rejects it and does not depend on Ray's per-process token cache.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

from raygen.errors import UserError

HOW_TO_GET = (
    "print the cluster's token on its head node with `ray get-auth-token` and set RAY_AUTH_TOKEN, "
    "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
)


@dataclasses.dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for error messages (never the token itself)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def _read_token_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def find_token(env: Mapping[str, str] | None = None) -> Token | None:
    """The token from the standard sources, or None when there is none.

    A RAY_AUTH_TOKEN_PATH that names a missing or empty file is a mistake, not "no token":
    Ray refuses it too, so we say so instead of silently falling back to ~/.ray/auth_token.
    """
    env = os.environ if env is None else env
    value = env.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return Token(value, "RAY_AUTH_TOKEN")
    path_var = env.get("RAY_AUTH_TOKEN_PATH", "")
    if path_var:
        path = Path(path_var).expanduser()
        value = _read_token_file(path)
        if value is None:
            raise UserError(
                f"RAY_AUTH_TOKEN_PATH={path_var} is not a readable, non-empty token file; "
                f"point it at the cluster's token file or unset it ({HOW_TO_GET})"
            )
        return Token(value, f"RAY_AUTH_TOKEN_PATH={path_var}")
    path = Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token"
    value = _read_token_file(path)
    if value is not None:
        return Token(value, str(path))
    return None
