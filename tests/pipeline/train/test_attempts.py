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


def test_the_controller_applies_the_budgets_and_the_driver_reads_its_counts(tmp_path):
    """retry_policy.BudgetCallback: Ray Train's controller retries; Sora's budgets stop the run."""
    from pipeline.errors import UserError
    from pipeline.storage import open_store
    from pipeline.train.attempts import BudgetSpent
    from pipeline.train.retry_policy import BudgetCallback, load_counts, reset_counts

    root = f"file://{tmp_path}/store"
    store = open_store(root)
    callback = BudgetCallback(Attempts(max_failures=1, max_node_losses=5), None, root, {}, "r")
    callback.after_exception(None, {1: ActorDiedError("worker died")})  # a loss: retried
    callback.after_report(None, [{"step": 8}, {"step": 8}], checkpoint=object())  # step 8 committed
    callback.after_exception(None, {0: ValueError("bad row")})  # an error: retried once
    with pytest.raises(UserError, match="checkpoint 4 is corrupt"):  # a refusal stops at once
        callback.after_exception(None, {0: RuntimeError("ResumeError: checkpoint 4 is corrupt\n...")})
    with pytest.raises(BudgetSpent, match=r"2 failures \(max_failures 1\), 1 node losses.*rank 0: bad row"):
        callback.after_exception(None, {0: ValueError("bad row")})
    driver = Attempts(max_failures=1, max_node_losses=5)
    load_counts(store, "r", driver)
    assert (driver.failures, driver.node_losses, driver.loss_commit) == (2, 1, None)
    reset_counts(store, "r")  # the next job starts afresh
    load_counts(store, "r", fresh := Attempts(1, 5))
    assert (fresh.failures, fresh.node_losses) == (0, 0)
