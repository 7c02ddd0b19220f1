"""The one exception type for user mistakes.

The CLI prints a UserError as a single line and exits non-zero, without a traceback. Anything
else is a bug in raygen and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input: the message names what is wrong and how to fix it."""


_MARKER = f"{__name__}.UserError: "


def find_user_error(exc: BaseException | None) -> "UserError | None":
    """Return the UserError inside exc's cause/context chain.

    Ray wraps errors raised in tasks and actors; some wrappers (Ray Data's UDF errors) keep the
    original only as traceback text, so that text is searched too.
    """
    found = _find_in_chain(exc)
    if found is not None or exc is None:
        return found
    for line in reversed(str(exc).splitlines()):
        if line.strip().startswith(_MARKER):
            return UserError(line.strip()[len(_MARKER):])
    return None


def _find_in_chain(exc: BaseException | None) -> "UserError | None":
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # ray.exceptions.RayTaskError keeps the original in `cause`; it is itself a subclass of the
        # original's type, but its text is the remote traceback, so the original comes first
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            found = _find_in_chain(cause)
            if found is not None:
                return found
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
