"""Fault drills for tests and benchmarks: hooks the library accepts but production never sets."""

from __future__ import annotations

from torch import Tensor


class NanLossOnce:
    """A ``d_loss_hook`` that poisons the D loss once, at ``step``, to exercise the NaN guard.

    Once only: the replay of that step after the guard's rollback runs clean.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.fired = False

    def __call__(self, step: int, loss: Tensor) -> Tensor:
        if step == self.step and not self.fired:
            self.fired = True
            return loss * float("nan")
        return loss
