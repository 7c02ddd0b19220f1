"""A user mistake met inside a Ray task reaches the user as its own one line."""

import pytest

from raygen.errors import UserError, find_user_error


def test_a_user_error_raised_in_a_ray_task_is_found_as_its_own_line(ray_local):
    @ray_local.remote
    def refuse():
        raise UserError("gpus_per_actor=1 asks for a GPU torch cannot see; set it to 0")

    with pytest.raises(Exception) as info:
        ray_local.get(refuse.remote())
    # Ray's wrapper is itself a UserError subclass whose text is the remote traceback
    assert isinstance(info.value, UserError) and "\n" in str(info.value)
    assert str(find_user_error(info.value)) == "gpus_per_actor=1 asks for a GPU torch cannot see; set it to 0"
