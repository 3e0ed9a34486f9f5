"""The data path, top to bottom: inference -> facts -> decision -> cache -> admission ->
backend -> response.

Every door (native, OpenAI, KServe v2) builds an :class:`Inference` (decoded inputs, what the
caller asked for) and calls :meth:`Pipeline.infer` with the request's
:class:`RequestRecord`, the one object that holds what this request did (the decision,
cache status, target, attempts, timings); the response's ``route`` is built from it once, at
the end, and the recorder counts it once. Nothing here knows HTTP or a wire format.

The caller's key may still be being checked against its limits when the request gets here
(the fast lane sends the check and goes on, ``auth.py``): up to the cache read the pipeline
only reads and decides; :meth:`RequestRecord.admitted` is awaited before anything leaves the
process (a backend call, an image URL fetch, a shadow copy) or is counted (cache lookups, an
experiment's assignment), so a refused request did nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from prism.backends import (
    FieldError,
    InputItem,
    InvalidInput,
    Modality,
    Output,
    PrismError,
    fetch_image,
    queue_wait_ms,
)

from .cache import ResponseCache, cache_key
from .deployments import Deployments
from .dispatch import Dispatcher
from .experiments import ExperimentEngine, ShadowMirror
from .ids import random_hex
from .inference import Inference, check_limits
from .metrics import Metrics
from .policy import CompiledPolicy, Decision, RequestFacts
from .recording import RequestRecord
from .schema import InferResponse
from .settings import Settings

#: image URLs of one request fetched at once
URL_FETCHES_PER_REQUEST = 8


def request_facts(inference: Inference) -> RequestFacts:
    """What routing may look at; an image given by URL counts as an image input."""
    modalities: frozenset[Modality] = frozenset().union(*(it.modalities for it in inference.items))
    if inference.image_urls:
        modalities |= {Modality.IMAGE}
    return RequestFacts(
        modalities=modalities,
        task=inference.task,
        model=inference.model,
        version=inference.version,
        headers=inference.headers,
        unit=inference.unit,
        latency_budget_ms=inference.latency_budget_ms,
    )


def _named(output: Output | None, version: tuple[str, str], top: tuple[str, str]) -> Output:
    """An output as the response carries it: ``model``/``version`` only where they differ
    from the response's own (an input a fallback answered in a mixed response)."""
    if output is None:
        return {}
    if version == top:
        return output
    return {**output, "model": version[0], "version": version[1]}


@dataclass(slots=True)
class _Work:
    """One request's inputs on their way through the cache and the backends."""

    inference: Inference
    decision: Decision
    items: list[InputItem]
    keys: list[str]
    outputs: list[Output | None]
    #: inputs another version than the planned one answered (a fallback, another target)
    others: dict[int, tuple[str, str]] = field(default_factory=dict)

    @property
    def planned(self) -> tuple[str, str]:
        return self.decision.model, self.decision.version


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        policy: Callable[[], CompiledPolicy],
        cache: ResponseCache,
        dispatcher: Dispatcher,
        deployments: Deployments,
        experiments: ExperimentEngine,
        mirror: ShadowMirror,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.cache = cache
        self.dispatcher = dispatcher
        self.deployments = deployments
        self.experiments = experiments
        self.mirror = mirror
        self.metrics = metrics

    async def infer(self, inference: Inference, record: RequestRecord) -> InferResponse:
        # 1. facts from the request
        check_limits(inference, self.settings.max_inputs)
        facts = request_facts(inference)

        # 2. the policy decision (this request keeps this policy even if a reload swaps it;
        # an experiment's assignment is counted in step 4)
        policy = self.policy()
        pick = self.experiments.later_pick()
        decision = policy.decide(facts, pick)
        record.decided(decision, self._reason(decision))
        record.unit = facts.unit
        if record.caller is not None:  # the key's scopes: 403 naming the scope
            decision = record.caller.scoped(decision, inference.task)
        self._check_serves(policy, decision, facts)
        items = await self._fetch_url_images(policy, inference, decision, record)

        # 3. cache lookup, per input (counted in step 4)
        definition = policy.fingerprint(decision.model, decision.version)
        keys = [
            cache_key(
                decision.model,
                decision.version,
                inference.task,
                it,
                inference.parameters,
                definition,
            )
            for it in items
        ]
        work = _Work(inference, decision, items, keys, [None] * len(items))
        record.cache = await self._lookup(work)

        # 4. the caller's key admitted (its check may have been on its way until now):
        # nothing leaves the process, nothing is counted, before
        await record.admitted()
        pick.count()
        self._count_lookup(work, record.cache)

        # 5. backend for the misses (identical concurrent misses computed once)
        missing = [i for i, o in enumerate(work.outputs) if o is None]
        if missing:
            await self._compute(work, missing, record)
        if decision.shadow is not None:
            self.mirror.mirror(decision, inference.task, items, inference.parameters, work.outputs)

        # 6. response: one other version answered everything: the response is that
        # version's; a mix keeps the planned version on top and names the other on each
        # output it answered
        answered_by, others = work.planned, work.others
        record.arm_answered = not others
        if others and len(others) == len(items) and len(set(others.values())) == 1:
            answered_by = next(iter(others.values()))
            others = {}
        record.answer_id = "req_" + random_hex()
        timing = {
            "queue": record.queue_ms,
            "backend": record.backend_ms,
            "total": record.elapsed_ms,
        }
        return InferResponse(
            id=record.answer_id,
            model=answered_by[0],
            version=answered_by[1],
            outputs=[
                _named(o, others.get(i, answered_by), answered_by)
                for i, o in enumerate(work.outputs)
            ],
            route=record.route(),
            timing_ms={k: round(v, 3) for k, v in timing.items()},
        )

    def _reason(self, decision: Decision) -> str:
        """The decision's reason, plus the arms a guardrail or an operator stopped: their
        units are served by the control arm, and the caller should be able to see why."""
        if decision.experiment is None:
            return decision.reason
        stopped = self.experiments.stopped(decision.experiment)
        if not stopped:
            return decision.reason
        names = ", ".join(
            f"{arm!r} ({info.get('reason', 'stopped')})" for arm, info in stopped.items()
        )
        return f"{decision.reason}; stopped: {names}, its units go to the control arm"

    def _check_serves(
        self, policy: CompiledPolicy, decision: Decision, facts: RequestFacts
    ) -> None:
        """A model asked for by name must serve the task and inputs: 422 before any work.

        Routes that match on task and modality never pick such a model; a request that names
        ``model`` directly bypasses that matching, so it is checked here. What the policy
        declares wins, else what the loaded backend reports; unknown (still loading) passes.
        """
        entry = policy.models[decision.model]
        tasks, modalities = entry.tasks, frozenset(entry.modalities)
        if not (tasks and modalities):
            caps = self.deployments.capabilities(decision.model, decision.version)
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

    async def _fetch_url_images(
        self,
        policy: CompiledPolicy,
        inference: Inference,
        decision: Decision,
        record: RequestRecord,
    ) -> list[InputItem]:
        """Resolve ``{"image": {"url": ...}}`` inputs, only where the model's spec allows hosts."""
        items, urls = inference.items, inference.image_urls
        if not urls:
            return items
        spec = policy.spec(decision.model, decision.version)
        allowed: list[str] = list(getattr(spec, "allow_url_hosts", []) or [])
        if not allowed:
            i = min(urls)
            raise InvalidInput(
                f"model {decision.model!r} does not accept image URLs; send the image as base64",
                errors=[
                    FieldError(
                        f"inputs[{i}].image.url", "image URLs are not allowed for this model"
                    )
                ],
            )
        await record.admitted()  # a fetch leaves the process
        # a few at a time: one request must not open hundreds of outbound connections
        gate = asyncio.Semaphore(URL_FETCHES_PER_REQUEST)

        async def fetch(url: str) -> bytes:
            async with gate:
                return await fetch_image(
                    url, allow_hosts=allowed, max_bytes=self.settings.max_body_bytes
                )

        order = sorted(urls)
        fetched = await asyncio.gather(*(fetch(urls[i]) for i in order), return_exceptions=True)
        out = list(items)
        for i, result in zip(order, fetched, strict=True):
            if isinstance(result, PrismError):
                path = f"inputs[{i}].image.url"
                result.errors = [FieldError(path, e.message) for e in result.errors] or [
                    FieldError(path, result.detail)
                ]
                raise result
            if isinstance(result, BaseException):
                raise result
            it = items[i]
            out[i] = InputItem(text=it.text, image=result, user=it.user, history=it.history)
        return out

    async def _lookup(self, work: _Work) -> str:
        """Fill ``work.outputs`` from the cache; the cache status of the request (counted by
        :meth:`_count_lookup`)."""
        mode = work.inference.cache
        if mode == "bypass" or work.decision.cache_ttl_s <= 0:
            return "bypass"
        if mode == "refresh":
            return "refresh"
        cached = await self.cache.get_many(work.keys)
        if cached is None:
            return "off"
        work.outputs[:] = cached
        return "hit" if all(v is not None for v in cached) else "miss"

    def _count_lookup(self, work: _Work, status: str) -> None:
        """The request's cache lookups in the metrics and the cache's figures, per input."""
        counter = self.metrics.cache_of
        if status == "off":
            counter("off").inc(len(work.keys))
        elif status in ("hit", "miss"):
            hits = sum(v is not None for v in work.outputs)
            counter("hit").inc(hits)
            counter("miss").inc(len(work.outputs) - hits)
            self.cache.count(hits, len(work.outputs) - hits)

    async def _dispatch(self, work: _Work, indices: list[int], record: RequestRecord) -> None:
        """Run ``items[indices]`` on the decision's targets; fill their outputs and the record.
        Inputs another version answered (a fallback or another target) go in ``work.others``.
        A backend's complaint about one input is reported at that input's field."""
        queue_wait_ms.set(0.0)
        decision, inference = work.decision, work.inference
        try:
            result = await self.dispatcher.run(
                decision,
                inference.task,
                [work.items[i] for i in indices],
                inference.parameters,
                budget_ms=decision.budget_ms(inference.latency_budget_ms),
                started=record.started,  # one deadline per request, however many dispatches
            )
        except PrismError as exc:
            if exc.input_index is not None and exc.input_index < len(indices):
                path = f"inputs[{indices[exc.input_index]}]"
                exc.errors = exc.errors or [FieldError(path, exc.detail)]
                exc.input_index = None
            raise
        for i, out in zip(indices, result.outputs, strict=True):
            work.outputs[i] = out
        record.target = result.target.key
        record.attempts = result.attempts
        record.fallback = result.fallback
        # the dispatcher's account starts with decision.reason: keep the stop note
        record.reason = (record.reason or "") + result.reason.removeprefix(decision.reason)
        record.backend_ms = result.backend_ms
        record.queue_ms = queue_wait_ms.get()
        by = (result.target.model, result.target.version)
        if by != work.planned:
            work.others.update(dict.fromkeys(indices, by))

    async def _compute(self, work: _Work, missing: list[int], record: RequestRecord) -> None:
        """Compute the missing inputs (identical concurrent misses once, across requests).

        Cache keys name the planned version: an answer from another version (a fallback, or
        another target of a multi-version route) is never stored under them nor handed to
        followers, who then compute for themselves. It is reported as that version's."""
        cache, keys, outputs = self.cache, work.keys, work.outputs
        # identical misses are computed once even while the shared cache is off (that is
        # when a burst needs it most); bypass and refresh compute for themselves
        coalesce = record.cache in ("miss", "hit", "off")
        followers: dict[int, asyncio.Future[Output | None]] = {}
        orphans: set[int] = set()  # followers whose leader got no answer for them
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

        owned = [keys[i] for i in leaders] if coalesce else []
        for k in owned:
            cache.lead(k)
        try:
            if leaders:
                await self._dispatch(work, leaders, record)
        finally:
            # None when this request failed, left, or got another version's answer:
            # followers then compute for themselves
            for k in owned:
                i = seen[k]
                cache.finish(k, outputs[i] if i not in work.others else None)
        for i in missing:  # duplicates inside this request
            if outputs[i] is None and keys[i] in seen:
                first = seen[keys[i]]
                outputs[i] = outputs[first]
                if first in work.others:
                    work.others[i] = work.others[first]
        if followers:
            # shielded: this request leaving must not cancel a future other requests share
            results = await asyncio.gather(*(asyncio.shield(f) for f in followers.values()))
            for i, out in zip(followers, results, strict=True):
                outputs[i] = out
            orphans = {i for i in followers if outputs[i] is None}
            if orphans:
                await self._dispatch(work, sorted(orphans), record)
        # what goes into the cache: the planned version's answers this request computed
        # (a follower's answer is its leader's, already stored)
        computed = [*leaders, *sorted(orphans)]
        fresh = {
            keys[i]: out
            for i in computed
            if i not in work.others and (out := outputs[i]) is not None
        }
        if record.cache != "bypass" and fresh:
            await cache.set_many(fresh, work.decision.cache_ttl_s)
