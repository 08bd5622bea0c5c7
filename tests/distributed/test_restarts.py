"""The recovery path's wait for a restarting actor (icg_rl/distributed/restarts.py). The killed-actor test in
test_training.py exercises it with real restarts, but whether Ray answers "restarting" there depends on timing;
these pin the retry rule itself with the real exception type."""
import pytest
from ray.exceptions import ActorUnavailableError, RayActorError

from icg_rl.distributed.restarts import until_answering


def restarting_for(calls: int):
    seen = []

    def call():
        seen.append(1)
        if len(seen) <= calls:
            raise ActorUnavailableError("The actor is restarting.", None)
        return len(seen)

    return call


def test_a_restarting_actor_is_asked_again_until_it_answers():
    assert until_answering(restarting_for(2), "pool", poll_s=0.01) == 3


def test_an_actor_that_never_comes_back_times_out_naming_the_pool():
    with pytest.raises(TimeoutError, match="reward pool 'aesthetic'.*still restarting"):
        until_answering(restarting_for(10**6), "reward pool 'aesthetic'", timeout_s=0.05, poll_s=0.01)


def test_other_actor_errors_are_not_retried():
    calls = []

    def dead():
        calls.append(1)
        raise RayActorError()

    with pytest.raises(RayActorError):
        until_answering(dead, "pool", poll_s=0.01)
    assert len(calls) == 1
