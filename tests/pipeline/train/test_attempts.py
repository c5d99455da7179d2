"""The driver's budgets across attempts (attempts.py): which failed attempts are lost workers
(`max_node_losses`) and which are errors that repeat (`max_failures`)."""

from __future__ import annotations

import pytest

from pipeline.train.attempts import Attempts, lost_worker


class ActorDiedError(Exception):
    """Named like Ray's: the driver matches worker losses by class name."""


class TrainingFailed(Exception):
    def __init__(self, *failures: BaseException) -> None:
        super().__init__("; ".join(map(str, failures)))
        self.worker_failures = dict(enumerate(failures))


def test_a_dead_worker_or_only_dead_peers_is_a_loss_anything_else_an_error():
    assert lost_worker(TrainingFailed(ActorDiedError("worker died")))
    assert lost_worker(TrainingFailed(RuntimeError("gloo: Connection closed by peer")))
    # One rank raised something else: that error would repeat on the next attempt.
    assert not lost_worker(TrainingFailed(RuntimeError("Connection closed by peer"), ValueError("bad row")))
    assert not lost_worker(TrainingFailed(ValueError("bad row")))


def test_a_loss_without_a_new_commit_since_the_last_loss_counts_as_a_failure():
    attempts = Attempts(max_failures=1, max_node_losses=10)
    died = TrainingFailed(ActorDiedError("worker died"))
    assert attempts.charge(died, committed=None).startswith("a worker was lost (1/10")  # first loss
    assert attempts.charge(died, committed=8).startswith("a worker was lost (2/10")  # step 8 committed since
    # Killed again before anything new was committed (an OOM kill at every resume): a failure.
    assert "no new checkpoint since the last loss" in attempts.charge(died, committed=8)
    assert (attempts.node_losses, attempts.failures) == (2, 1)
    with pytest.raises(TrainingFailed):  # the failure budget (1) is spent
        attempts.charge(died, committed=8)


def test_each_budget_is_spent_on_its_own_kind():
    attempts = Attempts(max_failures=2, max_node_losses=1)
    attempts.charge(TrainingFailed(ValueError("bad row")))
    attempts.charge(TrainingFailed(ActorDiedError("node died")), committed=4)
    attempts.charge(TrainingFailed(ValueError("bad row")))
    with pytest.raises(TrainingFailed):
        attempts.charge(TrainingFailed(ActorDiedError("node died")), committed=12)
