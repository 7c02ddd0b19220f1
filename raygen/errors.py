"""The one exception type for user mistakes.

The CLI prints a UserError as a single line and exits non-zero, without a traceback. Anything
else is a bug in raygen and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names what is wrong and how to fix it."""


def find_user_error(exc: BaseException | None) -> "UserError | None":
    """Return the UserError inside exc's cause/context chain (Ray wraps remote errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
        if isinstance(cause, BaseException):
            found = find_user_error(cause)
            if found is not None:
                return found
        exc = exc.__cause__ or exc.__context__
    return None
