"""One record per request, written once, whatever door it came through and however it ended.

A :class:`RequestRecord` lives in the ASGI scope from the moment a door (or the error
handler) first asks for it. The pipeline fills in what it decided and what happened (rule,
model, version, target, experiment arm, cache, attempts); the error handler sets the
normalised :class:`PrismError` when the request fails. :class:`Recorder` is a Litestar
``before_send`` hook: when the response starts, it writes the record to the metrics and to the
experiment figures, exactly once. No door and no pipeline stage counts anything itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prism.backends import PrismError, blame

from .experiments import unit_hash
from .schema import RouteInfo

if TYPE_CHECKING:
    from .access import Caller
    from .experiments import ExperimentEngine
    from .metrics import Metrics
    from .policy import Decision


class Admission(Protocol):
    """A key check still on its way (``auth.PendingAdmission``): ``wait`` returns once the
    key is admitted, or raises the refusal."""

    async def wait(self) -> None: ...


#: where a request's record lives in the ASGI scope's ``state``
RECORD_KEY = "prism.record"


def door_of(path: str) -> str:
    """The door a path belongs to: its wire formats, errors included, are that door's."""
    if path == "/v2" or path.startswith("/v2/"):
        return "kserve"
    # OpenAI clients are who call /v1 paths Prism does not have (/v1/chat/completions ...)
    if path.startswith("/v1/") and path not in ("/v1/infer", "/v1/feedback"):
        return "openai"
    return "native"


@dataclass(slots=True)
class RequestRecord:
    """What one request did: filled in as it goes, recorded once when its response starts."""

    door: str
    started: float = field(default_factory=time.perf_counter)
    rule: str = ""
    model: str = ""
    version: str = ""
    #: the target that answered, or was planned first
    target: str = ""
    experiment: str | None = None
    arm: str | None = None
    #: the request's experiment unit (``routing.unit``); None: a unit of its own
    unit: str | None = None
    reason: str | None = None
    cache: str = "miss"
    attempts: int = 0
    fallback: bool = False
    queue_ms: float = 0.0
    backend_ms: float = 0.0
    #: False when another version (a fallback) answered for the experiment arm's
    arm_answered: bool = True
    #: the answer's id (feedback may score it later)
    answer_id: str | None = None
    #: the failure, normalised once by the error handler
    error: PrismError | None = None
    #: who called (set by auth when keys are on): the pipeline checks the key's scopes
    caller: Caller | None = None
    #: the caller's limit check, when it is still on its way (the fast lane overlaps it with
    #: the request's own work: ``auth.py``); see :meth:`admitted`
    admission: Admission | None = None

    async def admitted(self) -> None:
        """Returns once the caller's key is admitted (at once when no check is on its way);
        raises its refusal. Nothing may leave the process for this request before."""
        if self.admission is not None:
            await self.admission.wait()

    def decided(self, decision: Decision, reason: str) -> None:
        """The policy's decision, as the response and the metrics report it."""
        self.rule, self.model, self.version = decision.rule, decision.model, decision.version
        self.target = decision.targets[0].key
        self.experiment, self.arm, self.reason = decision.experiment, decision.arm, reason

    def route(self) -> RouteInfo:
        """The ``route`` of the response, built once at the end."""
        return RouteInfo(
            rule=self.rule,
            target=self.target,
            experiment=self.experiment,
            arm=self.arm,
            cache=self.cache,  # type: ignore[arg-type]
            fallback=self.fallback,
            attempts=self.attempts,
            reason=self.reason,
        )

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def record_of(scope: Mapping[str, Any]) -> RequestRecord:
    """This request's record (made on first use, so the error handler always finds one)."""
    state = scope["state"]
    record = state.get(RECORD_KEY)
    if record is None:
        record = state[RECORD_KEY] = RequestRecord(door=door_of(scope["path"]))
    return record


def restart_record(scope: Mapping[str, Any]) -> RequestRecord:
    """The request's record begun again, with its door and start time: what a run of the
    request did before its key turned out refused, or changed, is not what it did (the fast
    lane's overlapped key check, ``auth.py``)."""
    old = record_of(scope)
    record = scope["state"][RECORD_KEY] = RequestRecord(door=old.door, started=old.started)
    return record


class Recorder:
    """Writes each request's record once, as its response starts (a ``before_send`` hook).

    ``known_models`` bounds the label values a caller can put in the metrics: a model or
    version named in a path is a label only when the policy knows it, so nobody can mint a
    time series per request (``/v2/models/<random>/infer``).
    """

    def __init__(
        self,
        metrics: Metrics,
        known_models: Callable[[], Mapping[str, Any]],
        experiments: ExperimentEngine | None = None,
    ) -> None:
        self.metrics = metrics
        self.known_models = known_models
        self.experiments = experiments

    # async on purpose: Litestar runs a sync hook on a worker thread
    async def __call__(self, message: Mapping[str, Any], scope: Mapping[str, Any]) -> None:
        if message["type"] != "http.response.start":
            return
        handler = scope.get("route_handler")
        if handler is not None and handler.opt.get("public"):
            return  # probes, metrics and docs are not requests to a model
        record = record_of(scope)
        del scope["state"][RECORD_KEY]  # written once, even if more start messages came
        self.record(record, int(message["status"]), scope.get("path_params") or {})

    def record(self, record: RequestRecord, status: int, path_params: Mapping[str, Any]) -> None:
        m = self.metrics
        if not record.model and path_params.get("model"):
            record.model, record.version = self._known(path_params)
        labels = (record.door, record.rule, record.model, record.version)
        total_ms = record.elapsed_ms
        error = record.error
        if error is None and status < 400:
            m.requests_of(*labels, record.target, "ok").inc()
            m.latency_of(*labels, record.target).observe(total_ms / 1000)
        else:
            # no target label: a failure after retries and fallbacks is the route's, and
            # each target's own failures are in prism_upstream_errors_total
            code = error.code if error is not None else str(status)
            m.requests_of(*labels, "", code).inc()
            m.errors_of(code).inc()
        engine = self.experiments
        if engine is None or record.experiment is None or record.arm is None:
            return
        arm_ok = record.arm_answered and not record.fallback
        unit = unit_hash(record.unit)  # statistics treat the unit as the observation
        if error is None:
            engine.record(
                record.experiment,
                record.arm,
                ok=arm_ok,
                latency_ms=total_ms,
                cached=record.cache == "hit",
                unit=unit,
            )
            if record.answer_id is not None and arm_ok:
                # POST /v1/feedback may score this answer later (only the arm's own answers)
                engine.feedback.remember(record.answer_id, record.experiment, record.arm, unit)
        elif blame(error).target:  # the caller's mistakes and load are not the arm's
            engine.record(record.experiment, record.arm, ok=False, latency_ms=total_ms, unit=unit)

    def _known(self, path_params: Mapping[str, Any]) -> tuple[str, str]:
        model, version = str(path_params.get("model", "")), str(path_params.get("version") or "")
        entry = self.known_models().get(model)
        if entry is None:
            return "(unknown)", ""
        if version and version not in entry.versions and version not in entry.labels:
            version = "(unknown)"
        return model, version


__all__ = [
    "RECORD_KEY",
    "Recorder",
    "RequestRecord",
    "door_of",
    "record_of",
    "restart_record",
]
