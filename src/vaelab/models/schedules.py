"""KL schedules: how the weight of the KL term (or its target, for `capacity`) moves during training.

Each is a closed form of the optimiser step t (0 for the first step) and the schedule's period
T in steps (the LightningModule turns a period in epochs into steps); f(t) multiplies β.

    constant  f(t) = 1
    linear    f(t) = min(1, t / T)                                   KL warm-up, Bowman et al. 2016
    cyclical  M cycles over T steps, each rising for a fraction R of it, then held; after T, 1:
              τ(t) = (t mod (T/M)) / (T/M),   f(t) = min(1, τ(t) / R)     Fu et al. 2019
    capacity  f(t) = 1, and the KL is pulled to a target that grows to C over T steps:
              loss = recon + β·|KL − C(t)|,   C(t) = C · min(1, t / T)     Burgess et al. 2018 (β is their γ)

Validation and test use the values the schedule ends at (f = 1, C(t) = C): `val/loss` then
measures the same objective at every epoch, so the best checkpoint is not simply an early one.
"""

from dataclasses import dataclass

from vaelab.catalog import KL_SCHEDULES, PERIOD_UNITS


@dataclass(frozen=True)
class KLSchedule:
    kind: str = "constant"
    period: float = 10.0  # T, in `unit`s
    unit: str = "epoch"
    cycles: int = 4  # cyclical: M
    ratio: float = 0.5  # cyclical: R, the rising part of each cycle
    capacity: float = 25.0  # capacity: C, in nats

    def __post_init__(self):
        if self.kind not in KL_SCHEDULES:
            raise ValueError(f"kl_schedule={self.kind} is not one of {', '.join(KL_SCHEDULES)}")
        if self.unit not in PERIOD_UNITS:
            raise ValueError(f"kl_period_unit={self.unit} is not one of {', '.join(PERIOD_UNITS)}")

    @property
    def varies(self) -> bool:
        """Whether the values change during training (a constant schedule costs nothing per step)."""
        return self.kind != "constant"

    def period_steps(self, steps_per_epoch: int) -> float:
        return self.period * steps_per_epoch if self.unit == "epoch" else self.period

    def weight(self, step: int, steps_per_epoch: int = 1) -> float:
        """f(t), the fraction of β that multiplies the KL term at optimiser step `step`."""
        period = self.period_steps(steps_per_epoch)
        if self.kind == "linear":
            return min(1.0, step / period)
        if self.kind == "cyclical":
            if step >= period:
                return 1.0
            cycle = period / self.cycles
            return min(1.0, (step % cycle) / cycle / self.ratio)
        return 1.0

    def target(self, step: int, steps_per_epoch: int = 1) -> float:
        """C(t), the KL target of the capacity schedule (0 for the others, which have none)."""
        if self.kind != "capacity":
            return 0.0
        return self.capacity * min(1.0, step / self.period_steps(steps_per_epoch))
