"""The data path, top to bottom: request -> facts -> decision -> cache -> backend -> response.

Every door (native, OpenAI, KServe v2) turns its wire format into an :class:`InferRequest`,
calls :meth:`Pipeline.infer`, and serialises the :class:`InferResponse` it gets back. Nothing
here knows HTTP; everything the caller should know about the decision is in ``route``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prism.backends import (
    FieldError,
    InputItem,
    InvalidImage,
    InvalidInput,
    Modality,
    Output,
    PrismError,
    decode_base64_image,
    fetch_image,
    queue_wait_ms,
)

from .cache import cache_key
from .policy import Decision, RequestFacts
from .schema import InferRequest, InferResponse, RouteInfo

if TYPE_CHECKING:
    from .runtime import Runtime


def _named(output: Output | None, version: tuple[str, str], top: tuple[str, str]) -> Output:
    """An output as the response carries it: ``model``/``version`` only where they differ
    from the response's own (an input a fallback answered in a mixed response)."""
    if output is None:
        return {}
    if version == top:
        return output
    return {**output, "model": version[0], "version": version[1]}


#: image URLs of one request fetched at once
URL_FETCHES_PER_REQUEST = 8


def decode_inputs(req: InferRequest, max_image_bytes: int) -> list[InputItem]:
    """Wire inputs -> :class:`InputItem`; base64 is checked here, image content by the backend."""
    items: list[InputItem] = []
    for i, spec in enumerate(req.inputs):
        image: bytes | None = None
        if spec.image is not None and spec.image.base64 is not None:
            path = f"inputs[{i}].image.base64"
            try:
                image = decode_base64_image(spec.image.base64)
            except InvalidImage as exc:
                exc.errors = [FieldError(path, e.message) for e in exc.errors] or [
                    FieldError(path, exc.detail)
                ]
                raise
            if len(image) > max_image_bytes:
                raise InvalidImage(
                    f"image is {len(image)} bytes; the limit is {max_image_bytes}",
                    errors=[FieldError(path, "too large")],
                )
        history = tuple(spec.history) if spec.history is not None else None
        items.append(InputItem(text=spec.text, image=image, user=spec.user, history=history))
    return items


def request_facts(
    req: InferRequest, items: Sequence[InputItem], headers: Mapping[str, str] | None
) -> RequestFacts:
    """What routing may look at; an image given by URL counts as an image input."""
    modalities: frozenset[Modality] = frozenset().union(*(it.modalities for it in items))
    if any(s.image is not None and s.image.url for s in req.inputs):
        modalities |= {Modality.IMAGE}
    return RequestFacts(
        modalities=modalities,
        task=req.task,
        model=req.model,
        version=req.version,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        unit=req.routing.unit,
        latency_budget_ms=req.routing.latency_budget_ms,
    )


class Pipeline:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def _fetch_url_images(
        self, req: InferRequest, items: list[InputItem], decision: Decision
    ) -> list[InputItem]:
        """Resolve ``{"image": {"url": ...}}`` inputs, only where the model's spec allows hosts."""
        urls = [
            (i, s.image.url)
            for i, s in enumerate(req.inputs)
            if s.image is not None and s.image.url
        ]
        if not urls:
            return items
        spec = self.rt.policy.spec(decision.model, decision.version)
        allowed: list[str] = list(getattr(spec, "allow_url_hosts", []) or [])
        if not allowed:
            i = urls[0][0]
            raise InvalidInput(
                f"model {decision.model!r} does not accept image URLs; send the image as base64",
                errors=[
                    FieldError(
                        f"inputs[{i}].image.url", "image URLs are not allowed for this model"
                    )
                ],
            )
        # a few at a time: one request must not open hundreds of outbound connections
        gate = asyncio.Semaphore(URL_FETCHES_PER_REQUEST)

        async def fetch(url: str) -> bytes:
            async with gate:
                return await fetch_image(
                    url, allow_hosts=allowed, max_bytes=self.rt.settings.max_body_bytes
                )

        fetched = await asyncio.gather(*(fetch(url) for _, url in urls), return_exceptions=True)
        out = list(items)
        for (i, _), result in zip(urls, fetched, strict=True):
            if isinstance(result, PrismError):
                path = f"inputs[{i}].image.url"
                result.errors = [FieldError(path, e.message) for e in result.errors] or [
                    FieldError(path, result.detail)
                ]
                raise result
            if isinstance(result, BaseException):
                raise result
            out[i] = InputItem(
                text=items[i].text, image=result, user=items[i].user, history=items[i].history
            )
        return out

    def _reason(self, decision: Decision) -> str:
        """The decision's reason, plus the arms a guardrail or an operator stopped: their
        units are served by the control arm, and the caller should be able to see why."""
        if decision.experiment is None:
            return decision.reason
        stopped = self.rt.experiments.stopped(decision.experiment)
        if not stopped:
            return decision.reason
        names = ", ".join(
            f"{arm!r} ({info.get('reason', 'stopped')})" for arm, info in stopped.items()
        )
        return f"{decision.reason}; stopped: {names}, its units go to the control arm"

    def _check_serves(self, decision: Decision, facts: RequestFacts) -> None:
        """A model asked for by name must serve the task and inputs: 422 before any work.

        Routes that match on task and modality never pick such a model; a request that names
        ``model`` directly bypasses that matching, so it is checked here. What the policy
        declares wins, else what the loaded backend reports; unknown (still loading) passes.
        """
        entry = self.rt.policy.models[decision.model]
        tasks, modalities = entry.tasks, frozenset(entry.modalities)
        if not (tasks and modalities):
            caps = self.rt.deployments.capabilities(decision.model, decision.version)
            if caps is not None:
                tasks, modalities = tasks or caps.tasks, modalities or caps.modalities
        if tasks and facts.task not in tasks:
            serves = ", ".join(sorted(t.value for t in tasks))
            raise InvalidInput(
                f"model {decision.model!r} does not serve task {facts.task.value!r} "
                f"(it serves: {serves})",
                errors=[FieldError("task", f"not served by {decision.model!r}")],
            )
        extra = facts.modalities - modalities if modalities else frozenset()
        if extra:
            accepts = ", ".join(sorted(modalities))
            raise InvalidInput(
                f"model {decision.model!r} does not take {', '.join(sorted(extra))} inputs "
                f"(it takes: {accepts})",
                errors=[FieldError("inputs", f"{', '.join(sorted(extra))} not accepted")],
            )

    async def infer(
        self, req: InferRequest, headers: Mapping[str, str] | None = None, *, door: str = "native"
    ) -> InferResponse:
        started = time.perf_counter()
        rt = self.rt
        if len(req.inputs) > rt.settings.max_inputs:
            raise InvalidInput(
                f"{len(req.inputs)} inputs; at most {rt.settings.max_inputs} per request",
                errors=[FieldError("inputs", f"at most {rt.settings.max_inputs} items")],
            )

        # 1. facts from the request
        items = decode_inputs(req, rt.settings.max_body_bytes)
        facts = request_facts(req, items, headers)

        # 2. the policy decision (this request keeps this policy even if a reload swaps it)
        policy = rt.policy
        decision = policy.decide(facts, rt.pick_arm)
        self._check_serves(decision, facts)
        items = await self._fetch_url_images(req, items, decision)
        params = req.parameters

        # 3. cache lookup, per input
        definition = policy.fingerprint(decision.model, decision.version)
        keys = [
            cache_key(decision.model, decision.version, req.task, it, params, definition)
            for it in items
        ]
        outputs: list[Output | None] = [None] * len(items)
        status = await self._lookup(req, decision, keys, outputs)

        # 4. backend for the misses (identical concurrent misses computed once)
        route = RouteInfo(
            rule=decision.rule,
            target=decision.targets[0].key,
            experiment=decision.experiment,
            arm=decision.arm,
            cache=status,
            attempts=0,
            reason=self._reason(decision),
        )
        timing = {"queue": 0.0, "backend": 0.0}
        missing = [i for i, o in enumerate(outputs) if o is None]
        planned = (decision.model, decision.version)
        #: inputs answered by another version than planned (a fallback, another target)
        others: dict[int, tuple[str, str]] = {}
        if missing:
            try:
                others = await self._compute(
                    req, decision, items, keys, missing, outputs, route, timing, status, started
                )
            except PrismError as exc:  # failed requests count too (per route, per arm)
                rt.observe_error(door, decision, exc, (time.perf_counter() - started) * 1000)
                raise
        if decision.shadow is not None:
            rt.shadow(decision, req.task, items, req.parameters, outputs)

        # 5. response
        timing["total"] = (time.perf_counter() - started) * 1000
        request_id = "req_" + secrets.token_hex(8)
        # one other version answered everything: the response is that version's; a mix
        # keeps the planned version on top and names the other on each output it answered
        answered_by = planned
        arm_answered = not others
        if others and len(others) == len(items) and len(set(others.values())) == 1:
            answered_by = next(iter(others.values()))
            others = {}
        rt.observe(door, decision, route, timing["total"], request_id, arm_answered=arm_answered)
        return InferResponse(
            id=request_id,
            model=answered_by[0],
            version=answered_by[1],
            outputs=[
                _named(o, others.get(i, answered_by), answered_by) for i, o in enumerate(outputs)
            ],
            route=route,
            timing_ms={k: round(v, 3) for k, v in timing.items()},
        )

    async def _lookup(
        self,
        req: InferRequest,
        decision: Decision,
        keys: Sequence[str],
        outputs: list[Output | None],
    ) -> Any:
        cache = self.rt.cache
        if req.cache == "bypass" or decision.cache_ttl_s <= 0:
            return "bypass"
        if req.cache == "refresh":
            return "refresh"
        cached = await cache.get_many(keys)
        if cached is None:
            self.rt.metrics.cache.labels("off").inc(len(keys))
            return "off"
        for i, value in enumerate(cached):
            outputs[i] = value
        hits = sum(v is not None for v in cached)
        self.rt.metrics.cache.labels("hit").inc(hits)
        self.rt.metrics.cache.labels("miss").inc(len(keys) - hits)
        return "hit" if hits == len(keys) else "miss"

    async def _dispatch(
        self,
        req: InferRequest,
        decision: Decision,
        items: Sequence[InputItem],
        indices: list[int],
        outputs: list[Output | None],
        route: RouteInfo,
        timing: dict[str, float],
        started: float,
    ) -> tuple[str, str]:
        """Run ``items[indices]`` on the decision's targets; fill ``outputs`` and ``route``;
        return the (model, version) that answered (a fallback or another target may).
        A backend's complaint about one input is reported at that input's field."""
        queue_wait_ms.set(0.0)
        try:
            result = await self.rt.dispatcher.run(
                decision,
                req.task,
                [items[i] for i in indices],
                req.parameters,
                budget_ms=decision.budget_ms(req.routing.latency_budget_ms),
                started=started,  # one deadline per request, however many dispatches
            )
        except PrismError as exc:
            if exc.input_index is not None and exc.input_index < len(indices):
                field = f"inputs[{indices[exc.input_index]}]"
                exc.errors = exc.errors or [FieldError(field, exc.detail)]
                exc.input_index = None
            raise
        for i, out in zip(indices, result.outputs, strict=True):
            outputs[i] = out
        route.target = result.target.key
        route.attempts = result.attempts
        route.fallback = result.fallback
        # the dispatcher's account starts with decision.reason: keep the stop note
        route.reason = (route.reason or "") + result.reason.removeprefix(decision.reason)
        timing["backend"] = result.backend_ms
        timing["queue"] = queue_wait_ms.get()
        return result.target.model, result.target.version

    async def _compute(
        self,
        req: InferRequest,
        decision: Decision,
        items: Sequence[InputItem],
        keys: Sequence[str],
        missing: list[int],
        outputs: list[Output | None],
        route: RouteInfo,
        timing: dict[str, float],
        status: str,
        started: float,
    ) -> dict[int, tuple[str, str]]:
        """Compute the missing inputs (identical concurrent misses once, across requests);
        returns the inputs another version than the planned one answered, and which.

        Cache keys name the planned version: an answer from another version (a fallback, or
        another target of a multi-version route) is never stored under them nor handed to
        followers, who then compute for themselves. It is reported as that version's."""
        rt = self.rt
        cache = rt.cache
        # identical misses are computed once even while the shared cache is off (that is
        # when a burst needs it most); bypass and refresh compute for themselves
        coalesce = status in ("miss", "hit", "off")
        followers: dict[int, asyncio.Future[Output | None]] = {}
        leaders: list[int] = []
        seen: dict[str, int] = {}
        for i in missing:
            fut = cache.join(keys[i]) if coalesce else None
            if fut is not None:
                followers[i] = fut
            elif keys[i] in seen:
                continue  # the same input twice in one request: computed once below
            else:
                seen[keys[i]] = i
                leaders.append(i)
        planned = (decision.model, decision.version)
        answered_by = planned
        others: dict[int, tuple[str, str]] = {}
        fresh: dict[str, Output] = {}  # what goes into the cache: the planned version's only

        def settle(indices: list[int], by: tuple[str, str]) -> None:
            if by != planned:
                others.update(dict.fromkeys(indices, by))
            else:
                fresh.update({keys[i]: out for i in indices if (out := outputs[i]) is not None})

        owned = [keys[i] for i in leaders] if coalesce else []
        for k in owned:
            cache.lead(k)
        try:
            if leaders:
                answered_by = await self._dispatch(
                    req, decision, items, leaders, outputs, route, timing, started
                )
        finally:
            # None when this request failed, left, or got another version's answer:
            # followers then compute for themselves
            for k in owned:
                cache.finish(k, outputs[seen[k]] if answered_by == planned else None)
        settle(leaders, answered_by)
        for i in missing:  # duplicates inside this request
            if outputs[i] is None and keys[i] in seen:
                outputs[i] = outputs[seen[keys[i]]]
                if seen[keys[i]] in others:
                    others[i] = others[seen[keys[i]]]
        if followers:
            # shielded: this request leaving must not cancel a future other requests share
            results = await asyncio.gather(*(asyncio.shield(f) for f in followers.values()))
            for i, out in zip(followers, results, strict=True):
                outputs[i] = out
            orphans = [i for i in followers if outputs[i] is None]
            if orphans:
                by = await self._dispatch(
                    req, decision, items, orphans, outputs, route, timing, started
                )
                settle(orphans, by)
        if status != "bypass" and fresh:
            await cache.set_many(fresh, decision.cache_ttl_s)
        return others
