"""The model repository API (Triton's repository extension, KServe ModelMesh's vmodels):
list models with per-version state, load (warmed up) and unload (drained) versions, move a
label (promote) and put it back (rollback).

What these change is an override on top of the policy file, kept in Redis (or a file next to
the policy) so every replica applies it and a restart keeps it; ``GET /admin/policy`` shows
it beside the file and ``prism policy export`` writes both as one file. Every change goes
through :func:`_changed`, the one place the audit log hears about it.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Request, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_200_OK
from pydantic import BaseModel, ConfigDict

from prism.backends import Conflict, ModelNotFound, PrismError, VersionNotFound

from .auth import key_id_of
from .doors._openapi import PROBLEM, documented
from .policy import PolicyDocument
from .policy._document import Name
from .repository import (
    Overrides,
    model_index,
    move_label,
    needed_by,
    roll_back,
    set_loaded,
    version_state,
)
from .runtime import Runtime

log = logging.getLogger("prism.admin.models")


class LabelMove(BaseModel):
    """Where a label should point."""

    model_config = ConfigDict(extra="forbid")

    version: Name


class LoadFailed(PrismError):
    """The version was asked to load but did not start, or its warm-up inference failed."""

    status_code = 500
    code = "load_failed"
    title = "Model version failed to load"


async def _changed(
    request: Request[Any, Any, Any],
    *,
    action: str,
    target: str,
    before: Any,
    after: Any,
    outcome: str = "ok",
) -> None:
    """Every model-management action ends here, done or refused: the log and the audit log
    (``GET /admin/audit``: ``model.load``, ``model.unload``, ``model.promote``, ...)."""
    log.info(
        "%s %s: %s (before %s, after %s)", action, target, outcome, before, after,
        extra={"path": request.url.path},
    )  # fmt: skip
    runtime: Runtime = request.app.state.runtime
    await runtime.audit.record(
        action=f"model.{action}",
        target=target,
        key_id=key_id_of(request),
        outcome=outcome,
        before=before,
        after=after,
    )


def _version_state_or_404(runtime: Runtime, model: str, version: str) -> dict[str, Any]:
    entry = runtime.base.document.models.get(model)
    if entry is None:
        raise ModelNotFound(f"unknown model {model!r}", extra={"model": model})
    if version not in entry.versions:
        known = ", ".join(sorted(entry.versions))
        raise VersionNotFound(
            f"model {model!r} has no version {version!r} (known: {known})",
            extra={"model": model, "version": version},
        )
    return version_state(runtime.policy, runtime.deployments, model, version)


def _labels(runtime: Runtime, model: str) -> dict[str, str]:
    return dict(runtime.policy.document.models[model].labels)


_REPOSITORY = {404: "No such model, or no such version of it, in the running policy"}


class ModelsController(Controller):
    path = "/admin/models"
    tags = ["admin"]
    opt = {"admin": True}  # PRISM_ADMIN_KEYS guard these

    @get(
        "/",
        summary="Every model: labels, and per version its state, backend, targets, in-flight calls",
        **documented(PROBLEM, 401, 403),
    )
    async def index(self, runtime: NamedDependency[Runtime]) -> dict[str, Any]:
        file_labels = {n: dict(e.labels) for n, e in runtime.base.document.models.items()}
        return {"models": model_index(runtime.policy, runtime.deployments, file_labels)}

    @post(
        "/{model:str}/versions/{version:str}/load",
        status_code=HTTP_200_OK,
        summary="Load a version (one warm-up inference before it is ready)",
        **documented(
            PROBLEM,
            *(401, 403, 404, 503),
            wording={
                **_REPOSITORY,
                500: "The version did not load, or its warm-up inference failed (detail: why)",
                503: "The override store (Redis) cannot be reached; nothing changed",
            },
        ),
    )
    async def load(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        model: FromPath[str],
        version: FromPath[str],
    ) -> dict[str, Any]:
        before = _version_state_or_404(runtime, model, version)["state"]

        def edit(doc: PolicyDocument, current: Overrides) -> Overrides:
            return set_loaded(doc, current, model, version, True)

        await runtime.change_models(edit, warm=frozenset({(model, version)}))
        state = version_state(runtime.policy, runtime.deployments, model, version)
        target = f"{model}@{version}"
        if state["state"] != "ready":
            await _changed(
                request, action="load", target=target, before=before, after=state["state"],
                outcome="failed",
            )  # fmt: skip
            raise LoadFailed(f"{target} did not load: {state['reason']}", extra={"version": state})
        await _changed(request, action="load", target=target, before=before, after="ready")
        return {"model": model, **state}

    @post(
        "/{model:str}/versions/{version:str}/unload",
        status_code=HTTP_200_OK,
        summary="Unload a version: stop routing to it, let calls in flight finish, free it",
        **documented(
            PROBLEM,
            *(401, 403, 404, 409, 422, 503),
            wording={
                **_REPOSITORY,
                409: "A label, route or experiment still needs the version (`needed_by` names "
                "them); `force=true` unloads it anyway",
                422: "`force` is not true or false",
                503: "The override store (Redis) cannot be reached; nothing changed",
            },
        ),
    )
    async def unload(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        model: FromPath[str],
        version: FromPath[str],
        force: FromQuery[bool] = False,
    ) -> dict[str, Any]:
        before = _version_state_or_404(runtime, model, version)["state"]
        target = f"{model}@{version}"
        needs = needed_by(runtime.policy, model, version)
        if needs and not force:
            await _changed(
                request, action="unload", target=target, before=before, after=before,
                outcome="refused",
            )  # fmt: skip
            raise Conflict(
                f"{target} is still needed by {', '.join(needs)}: move them first, "
                "or unload with force=true (their requests then fail or fall back)",
                extra={"needed_by": needs},
            )

        def edit(doc: PolicyDocument, current: Overrides) -> Overrides:
            return set_loaded(doc, current, model, version, False)

        await runtime.change_models(edit)
        cut_off = await runtime.deployments.drained(model, version)
        state = version_state(runtime.policy, runtime.deployments, model, version)
        await _changed(
            request, action="unload", target=target, before=before, after=state["state"],
            outcome="forced" if needs else "ok",
        )  # fmt: skip
        # cut_off: calls the drain time (PRISM_UNLOAD_DRAIN_S) ended before they finished
        return {"model": model, **state, "forced_past": needs, "cut_off": cut_off}

    @put(
        "/{model:str}/labels/{label:str}",
        status_code=HTTP_200_OK,
        summary="Move a label to a version (promote)",
        **documented(
            PROBLEM,
            *(400, 401, 403, 404, 409, 422, 503),
            wording={
                **_REPOSITORY,
                409: "The version is unloaded, or not ready on this replica (`force=true` "
                "moves the label anyway)",
                422: 'The label is a version id, the body is not `{"version": ID}`, or '
                "`force` is not true or false",
                503: "The override store (Redis) cannot be reached; nothing changed",
            },
        ),
    )
    async def promote(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        model: FromPath[str],
        label: FromPath[str],
        data: JSONBody[LabelMove],
        force: FromQuery[bool] = False,
    ) -> dict[str, Any]:
        version = data.version
        state = _version_state_or_404(runtime, model, version)
        before = _labels(runtime, model).get(label)
        target = f"{model}/labels/{label}"
        # (an unloaded version is refused by the edit itself, saying how to load it)
        if state["state"] not in ("ready", "unloaded") and not force:
            await _changed(
                request, action="promote", target=target, before=before, after=before,
                outcome="refused",
            )  # fmt: skip
            raise Conflict(
                f"{model}@{version} is {state['state']} here"
                + (f" ({state['reason']})" if state["reason"] else "")
                + ": promote a ready version, or pass force=true",
                extra={"version": state},
            )

        def edit(doc: PolicyDocument, current: Overrides) -> Overrides:
            return move_label(doc, current, model, label, version)

        try:
            await runtime.change_models(edit)
        except PrismError as exc:
            await _changed(
                request, action="promote", target=target, before=before, after=before,
                outcome=exc.code,
            )  # fmt: skip
            raise
        await _changed(request, action="promote", target=target, before=before, after=version)
        return {"model": model, "label": label, "version": version, "previous": before,
                "labels": _labels(runtime, model)}  # fmt: skip

    @post(
        "/{model:str}/labels/{label:str}/rollback",
        status_code=HTTP_200_OK,
        summary="Put a label back where it pointed before its last move",
        **documented(
            PROBLEM,
            *(401, 403, 404, 409, 503),
            wording={
                404: "No such model in the running policy",
                409: "The label was not moved at run time (nothing to roll back), or the "
                "version it pointed at is unloaded",
                503: "The override store (Redis) cannot be reached; nothing changed",
            },
        ),
    )
    async def rollback(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        model: FromPath[str],
        label: FromPath[str],
    ) -> dict[str, Any]:
        if model not in runtime.base.document.models:
            raise ModelNotFound(f"unknown model {model!r}", extra={"model": model})
        before = _labels(runtime, model).get(label)
        target = f"{model}/labels/{label}"

        def edit(doc: PolicyDocument, current: Overrides) -> Overrides:
            return roll_back(doc, current, model, label)

        try:
            await runtime.change_models(edit)
        except PrismError as exc:
            await _changed(
                request, action="rollback", target=target, before=before, after=before,
                outcome=exc.code,
            )  # fmt: skip
            raise
        after = _labels(runtime, model).get(label)
        await _changed(request, action="rollback", target=target, before=before, after=after)
        return {"model": model, "label": label, "version": after, "previous": before,
                "labels": _labels(runtime, model)}  # fmt: skip
