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


def test_a_lost_node_always_counts_as_a_loss_even_without_progress():
    attempts = Attempts(max_failures=0, max_node_losses=10)
    node = TrainingFailed(ActorDiedError("The actor died because its node has died. Node Id: ab12"))
    for _ in range(3):  # spot reclaims in a row during one long resume: no commit in between
        assert attempts.charge(node, committed=8).startswith("a worker was lost")
    assert (attempts.node_losses, attempts.failures) == (3, 0)


def test_the_controller_charges_once_per_restart_and_the_driver_reads_its_counts(tmp_path):
    """retry_policy.BudgetCallback runs in Ray Train's controller at each state change: only the move
    to RestartingState charges (once per failure), a refusal or a spent budget stops the run."""
    from ray.train.v2._internal.execution.controller.state import RestartingState, RunningState
    from ray.train.v2.api.exceptions import WorkerGroupError

    from pipeline.errors import UserError
    from pipeline.records import AttemptLog
    from pipeline.storage import open_store
    from pipeline.train.attempts import BudgetSpent
    from pipeline.train.retry_policy import BudgetCallback, load_counts

    root = f"file://{tmp_path}/store"
    store = open_store(root)
    callback = BudgetCallback(Attempts(max_failures=1, max_node_losses=5), [], root, {}, "r", epoch=3)

    def restart(*failures):
        error = WorkerGroupError("failed", dict(enumerate(failures)))
        callback.after_controller_state_update(RunningState(), RestartingState(training_failed_error=error))

    callback.after_controller_state_update(RestartingState(None), RunningState())  # not a failure: nothing
    restart(ActorDiedError("worker died"))  # a loss: retried
    # An elastic restart waiting for room reports the same RestartingState at every controller loop.
    waiting = RestartingState(
        training_failed_error=WorkerGroupError("failed", {0: ActorDiedError("its node has died")})
    )
    for _ in range(5):
        callback.after_controller_state_update(waiting, waiting)
    assert callback.attempts.node_losses == 2  # charged once
    restart(ValueError("bad row"))  # an error: retried once
    with pytest.raises(UserError, match="checkpoint 4 is corrupt"):  # a refusal stops at once
        restart(RuntimeError("ResumeError: checkpoint 4 is corrupt\n..."))
    with pytest.raises(BudgetSpent, match=r"2 failures \(max_failures 1\), 2 node losses.*rank 0: bad row"):
        restart(ValueError("bad row"))
    driver = Attempts(max_failures=1, max_node_losses=5)
    events = load_counts(store, "r", 3, driver)
    assert (driver.failures, driver.node_losses) == (2, 2) and len(events) == 4
    assert events[0].startswith("a worker was lost (1/5 node losses)") and "training stopped" in events[-1]
    assert AttemptLog.load(store, "r", 4) is None  # the next job (a new lease epoch) starts afresh
