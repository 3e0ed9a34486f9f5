"""Prism's one exception tree.

Every error Prism raises on purpose is a :class:`PrismError`. The class carries the HTTP
status and a stable machine-readable ``code``; the gateway renders every one of them as an
RFC 9457 problem document, so a caller never sees a stack trace. Foreign exceptions (httpx,
redis, PIL, torch) are mapped to these classes at the boundary where they occur, with
``raise ... from exc`` so the cause stays in the logs.

It lives in ``backends`` (the lowest layer that raises caller-visible errors) so that
backends never import ``gateway``; ``gateway.errors`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of the request, e.g. ``inputs[2].image.base64``."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class PrismError(Exception):
    """Root of every error Prism raises deliberately."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    #: set by a backend when one input of a batch is at fault (its index in that batch),
    #: so the gateway can name the field, e.g. ``inputs[3].image``
    input_index: int | None = None

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}
        self.extra = extra or {}


# --- the caller's mistakes (4xx) -------------------------------------------------------


class BadRequest(PrismError):
    status_code = 400
    code = "bad_request"
    title = "Bad request"


class MalformedBody(BadRequest):
    code = "malformed_body"
    title = "Malformed request body"


class InvalidInput(PrismError):
    """The request parsed but a field is wrong (type, range, content)."""

    status_code = 422
    code = "invalid_input"
    title = "Invalid input"


class InvalidImage(InvalidInput):
    code = "invalid_image"
    title = "Invalid image"


class NotFound(PrismError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class ModelNotFound(NotFound):
    code = "model_not_found"
    title = "Unknown model"


class VersionNotFound(NotFound):
    code = "version_not_found"
    title = "Unknown model version"


class NoRoute(PrismError):
    """No policy route serves this combination of modality/task/model."""

    status_code = 422
    code = "no_route"
    title = "No route serves this request"


class MethodNotAllowed(PrismError):
    status_code = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class ClientClosedRequest(PrismError):
    """The caller went away before its body arrived: nobody reads the answer, nothing is
    wrong with Prism (nginx's 499, so dashboards do not count it as a server error)."""

    status_code = 499
    code = "client_closed_request"
    title = "Client closed the request"


class Conflict(PrismError):
    """The request clashes with what already happened (feedback given twice)."""

    status_code = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(PrismError):
    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(PrismError):
    """A body in a ``Content-Encoding`` (or type) Prism cannot read."""

    status_code = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class Unauthorized(PrismError):
    status_code = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(PrismError):
    """A valid key without the right: an inference key on an admin endpoint."""

    status_code = 403
    code = "forbidden"
    title = "Forbidden"


# --- capacity and backends (5xx) ---------------------------------------------------------


class Overloaded(PrismError):
    """A queue is full or a budget cannot be met: the caller should retry later."""

    status_code = 503
    code = "overloaded"
    title = "Service overloaded"

    def __init__(self, detail: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, int(retry_after_s))))


class CircuitOpen(Overloaded):
    """Every target of the route failed often enough that its circuit opened: 503 with
    Retry-After (when the next probe may go through). Unlike plain load, this is the
    targets failing, so an experiment arm counts it against itself."""

    code = "circuit_open"
    title = "Circuit open"


class QueueTimeout(Overloaded):
    """The deadline passed while the inputs still waited in a local batching queue.

    That is load, not a broken model: it is an :class:`Overloaded` (503 + Retry-After, another
    replica may answer), and it never counts against the target's circuit breaker.
    """

    code = "queue_timeout"
    title = "Timed out waiting in the queue"


class NotReady(Overloaded):
    code = "not_ready"
    title = "Model not ready"


class BackendError(PrismError):
    """A backend failed after every retry and fallback."""

    status_code = 502
    code = "backend_error"
    title = "Backend failed"


class UpstreamRejected(BackendError):
    """A remote server answered 400/413/422...: the request itself is wrong there; retrying
    won't help, and it says nothing about the upstream's health."""

    code = "upstream_rejected"
    title = "Upstream rejected the request"


class UpstreamRefused(BackendError):
    """A remote server answered 401/403/404: this target is misconfigured (a wrong key, a
    wrong ``remote_model``). Another target or a fallback may serve; its circuit counts it."""

    code = "upstream_refused"
    title = "Upstream refused the request"


class UpstreamBusy(BackendError):
    """A remote server answered 429 or 408: load, passed on as 503 with its Retry-After.
    Another replica or a fallback may serve; it does not count against the upstream."""

    status_code = 503
    code = "upstream_busy"
    title = "Upstream busy"


class BackendTimeout(BackendError):
    status_code = 504
    code = "backend_timeout"
    title = "Backend timed out"


class ModelTimeout(BackendTimeout):
    """A model ran past the deadline under load: a local one that started the inputs but did
    not finish them (CPU contention, a long batch ahead), or a remote call that first waited
    behind the gateway's own calls for a connection. Not a broken model: 504 with
    Retry-After, and no circuit opens or guardrail trips because of it."""

    code = "model_timeout"
    title = "Model timed out"


class BackendUnavailable(BackendError):
    code = "backend_unavailable"
    title = "Backend unavailable"


class CacheUnavailable(PrismError):
    """The shared cache cannot be reached. Never shown to callers: requests go on uncached."""

    status_code = 503
    code = "cache_unavailable"
    title = "Cache unavailable"


class PolicyError(PrismError):
    """A policy file is invalid; ``detail`` reads ``file:line: path: reason``."""

    status_code = 422
    code = "invalid_policy"
    title = "Invalid policy"


# --- whose failure is it? -------------------------------------------------------------------


@dataclass(frozen=True)
class Blame:
    """Whose failure this is, and whether another try may succeed.

    The one answer that retries and fallbacks, circuit breakers, latency tracking, shadow
    mirrors and experiment guardrails all ask (:func:`blame`): a burst of load must never open
    a circuit or trip a guardrail, and a caller's mistake must never be retried elsewhere.
    """

    #: ``caller``: the request is wrong (here, or as the upstream read it);
    #: ``load``: busy, not broken (a full queue, a budget, an upstream's 429, a model slowed
    #: by contention); ``target``: the model or server failed
    party: Literal["caller", "load", "target"]
    #: another try, on the same or another target, may succeed
    retry: bool

    @property
    def target(self) -> bool:
        """The failure says the target is unhealthy (breakers, error rates, arms count it)."""
        return self.party == "target"


def blame(exc: BaseException) -> Blame:
    """Who :class:`Blame` falls on for ``exc`` (anything not a PrismError is a bug behind the
    door: the target's, and not worth the same call again)."""
    if not isinstance(exc, PrismError):
        return Blame("target", retry=False)
    if isinstance(exc, CircuitOpen):  # the targets kept failing; another route target may not
        return Blame("target", retry=True)
    if isinstance(exc, Overloaded | UpstreamBusy | ModelTimeout):
        return Blame("load", retry=True)
    if isinstance(exc, UpstreamRejected):  # the upstream read the request as wrong
        return Blame("caller", retry=False)
    if isinstance(exc, BackendError):  # 5xx, unreachable, timed out, refused (misconfigured)
        return Blame("target", retry=True)
    if exc.status_code < 500:
        return Blame("caller", retry=False)
    return Blame("target", retry=False)
