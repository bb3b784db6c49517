"""Learning-rate schedules as one pure function of the step number.

Every schedule here is ``peak_lr * lr_multiplier(step, ...)``.  Writing it as
a plain function (instead of chaining ``torch.optim.lr_scheduler`` objects)
makes it easy to read, to plot, to test, and to resume: the multiplier at
step ``s`` depends on ``s`` alone.

* ``constant``: 1 after warm-up.
* ``step``:     multiply by ``step_gamma`` every ``step_every`` epochs.
* ``cosine``:   half a cosine from 1 down to ``final_lr_fraction``.
* ``onecycle``: a straight line up (the warm-up, 30% of training unless set)
  then a straight line down to ``final_lr_fraction``: the triangular
  one-cycle policy used by fast CIFAR-10 training recipes.

Warm-up is a linear ramp from ``1/warmup_steps`` to 1 over ``warmup_epochs``:
large early updates from a freshly initialised network are what it prevents.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "step", "cosine", "onecycle")


def lr_multiplier(step: int, *, total_steps: int, steps_per_epoch: int, schedule: str = "constant",
                  warmup_epochs: float = 0.0, step_every: int = 10, step_gamma: float = 0.1,
                  final_lr_fraction: float = 0.0) -> float:
    """The factor applied to the peak learning rate at optimiser step ``step`` (0-based)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    warmup = round(warmup_epochs * steps_per_epoch)
    if schedule == "onecycle" and warmup == 0:
        warmup = max(1, round(0.3 * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return step_gamma ** ((step // steps_per_epoch) // step_every)
    if schedule == "cosine":
        return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - final_lr_fraction) * progress  # onecycle: linear decay after the ramp
