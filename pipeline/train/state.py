"""The stateful parts of a training run besides the engine and the loader, each saving and restoring
itself (`state_dict` / `load_state_dict`), as `CheckpointManager` expects of every part.

Their state dicts are the fields of `trainer_state.json` (`pipeline.records.TrainerState`):
`Progress` -> step, tokens; `RngState` -> rng; `EarlyStopping` -> early_stopping.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any, Protocol

import numpy as np
import torch


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Progress:
    """Optimizer steps taken and tokens consumed so far."""

    def __init__(self) -> None:
        self.step = 0
        self.tokens = 0

    def advance(self, tokens: int) -> None:
        self.step += 1
        self.tokens += tokens

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state.get("tokens", 0))


class RngState:
    """RNG states of rank 0 (torch, numpy, python). Training draws no random numbers today (no
    dropout); kept so any future stochastic component resumes exactly."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "numpy": base64.b64encode(json.dumps(_jsonable(np.random.get_state())).encode()).decode(),
            "python": base64.b64encode(json.dumps(_jsonable(random.getstate())).encode()).decode(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()))
        if "numpy" in state and "python" in state:
            kind, keys, pos, has_gauss, gauss = json.loads(base64.b64decode(state["numpy"]))
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
            version, internal, gauss_next = json.loads(base64.b64decode(state["python"]))
            random.setstate((version, tuple(internal), gauss_next))


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


class EarlyStopping:
    """Stop after `patience` evaluations without a better validation loss (None: never stop).

    Identical on every rank, because the validation loss it compares is all-reduced.
    """

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best_val: float | None = None
        self.evals_since_best = 0
        self.stopped = False

    def update(self, val_loss: float, can_stop: bool) -> bool:
        """Record one evaluation; True when training stops here (only if `can_stop`)."""
        if self.patience is None:
            return False
        if self.best_val is None or val_loss < self.best_val:
            self.best_val, self.evals_since_best = val_loss, 0
        else:
            self.evals_since_best += 1
        if self.evals_since_best >= self.patience and can_stop:
            self.stopped = True
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_val": self.best_val, "evals_since_best": self.evals_since_best, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val = state.get("best_val")
        self.evals_since_best = state.get("evals_since_best", 0)
        self.stopped = bool(state.get("stopped", False))
