"""The wire of sweeps: a request (a base training job, a search space over its fields,
how many trials and how many at once, the metric and its direction, the sampler and the
pruner), and what ``GET /v1/sweeps/{id}`` answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.schemas import ALIAS_PATTERN, TrainRequest
from shared.sweepstate import SweepState, TrialState

# A field of the base request that a sweep searches over: ``params.X`` or ``training.X``.
SPACE_KEY = r"^(params|training)\.[a-z_][a-z0-9_]{0,63}$"
# The metric a trial is scored by, as its epoch records name it.
METRIC_PATTERN = r"^(val|train)_[a-z0-9_]{1,64}$"
MAX_TRIALS = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Uniform(_Strict):
    type: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError("low must be less than high")
        return self


class LogUniform(Uniform):
    """Uniform in the logarithm: for learning rates and other scales."""

    type: Literal["log_uniform"]  # type: ignore[assignment]

    @model_validator(mode="after")
    def _positive(self) -> LogUniform:
        if self.low <= 0:
            raise ValueError("a log-uniform range starts above 0")
        return self


class IntRange(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low <= self.high:
            raise ValueError("low must be at most high")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log range of integers starts at 1 or more, with step 1")
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1, max_length=100)


Distribution = Annotated[Uniform | LogUniform | IntRange | Choice, Field(discriminator="type")]
SpaceKey = Annotated[str, Field(pattern=SPACE_KEY)]


class SweepRequest(_Strict):
    base: TrainRequest = Field(description="a training job, as POST /v1/jobs/train takes it")
    space: Annotated[dict[SpaceKey, Distribution], Field(min_length=1, max_length=32)] = Field(
        description='the fields searched, e.g. {"training.learning_rate": {"type": '
        '"log_uniform", "low": 1e-4, "high": 0.1}}'
    )
    trials: int = Field(ge=1, le=MAX_TRIALS)
    parallel: int = Field(1, ge=1, le=64, description="trials running at once, at most")
    metric: str = Field("val_loss", pattern=METRIC_PATTERN)
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="default: minimize a loss or an error (mse), maximize the others"
    )
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "successive_halving", "none"] = "none"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    promote: str | None = Field(
        None, pattern=ALIAS_PATTERN, description="an alias to point at the best trial's version"
    )

    @model_validator(mode="after")
    def _direction(self) -> SweepRequest:
        if self.direction is None:
            lower = self.metric.endswith(("loss", "mse", "error"))
            self.direction = "minimize" if lower else "maximize"
        return self


class TrialOut(BaseModel):
    number: int
    state: TrialState
    params: dict[str, Any]
    value: float | None
    # The last epoch it reported (a pruned trial stopped there), and the metric after
    # each epoch, by epoch.
    epoch: int
    intermediate: dict[str, float] = Field(default_factory=dict)
    # What the sampler noted with the trial (Optuna's system attributes): kept for the
    # search, not shown.
    system_attrs: dict[str, Any] = Field(default_factory=dict, exclude=True)
    job_id: str
    model_version: int | None = None
    # A pending trial's metric at the epoch it has reached (its final one is ``value``).
    latest: float | None = None
    created_at: datetime
    ended_at: datetime | None


class SweepOut(BaseModel):
    id: str
    state: SweepState
    model_name: str
    spec: dict[str, Any]
    trials: list[TrialOut] = Field(default_factory=list)
    best: TrialOut | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    message: str | None
    submitted_by: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class SweepPage(BaseModel):
    items: list[SweepOut]
    limit: int
    offset: int
