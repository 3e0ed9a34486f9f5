"""``prism policy explain``: the decision a policy takes for a request, offline.

The same :meth:`CompiledPolicy.decide` the gateway runs, with the same sticky assignment, so
what this prints is what a gateway with no stopped arms would do. What only a running gateway
knows (recent latencies, open circuits) is not available here: targets are listed in the
policy's order and the strategy that would reorder them is named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from prism.backends._contract_resolve import contract_plan

from .cache import cache_key
from .doors.native import inference_from_wire
from .experiments import arm_ranges, assign
from .pipeline import request_facts
from .policy import CompiledPolicy, Experiment
from .schema import InferRequest


def explain(
    policy: CompiledPolicy, request: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The decision for ``request`` (native ``/v1/infer`` JSON) as a JSON-ready dict."""
    req = InferRequest.model_validate(request)
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    inference = inference_from_wire(req, max_image_bytes=2**31, headers=lowered)
    facts = request_facts(inference)
    assignment: dict[str, Any] = {}

    def pick_arm(name: str, experiment: Experiment, unit: str | None) -> str:
        a = assign(name, experiment, unit)
        ranges = {r.arm: [r.start, r.end] for r in arm_ranges(experiment)}
        assignment.update(
            unit=unit if unit is not None else None,
            sticky=unit is not None,
            bucket=a.bucket,
            arm=a.arm,
            buckets=ranges,
        )
        return a.arm

    decision = policy.decide(facts, pick_arm)
    route = decision.route
    budget = decision.budget_ms(req.routing.latency_budget_ms)
    entry = policy.document.models[decision.model]
    labels = [name for name, v in entry.labels.items() if v == decision.version]
    return {
        "rule": decision.rule,
        "model": decision.model,
        "version": decision.version,
        "version_labels": labels,
        "experiment": decision.experiment,
        "arm": decision.arm,
        "assignment": assignment or None,
        "shadow": decision.shadow.key if decision.shadow else None,
        "shadow_arm": decision.shadow_arm,
        "strategy": route.latency.strategy,
        "targets": [t.key for t in decision.targets],
        "fallback": [t.key for t in decision.fallback],
        "latency_budget_ms": budget,
        "strict": route.strict,
        "timeout_ms": route.timeout_ms,
        "retries": route.retries,
        "hedge_after_ms": route.hedge_after_ms,
        "cache": {
            "ttl_s": decision.cache_ttl_s,
            "mode": req.cache,
            "keys": [
                cache_key(
                    decision.model,
                    decision.version,
                    req.task,
                    it,
                    req.parameters,
                    policy.fingerprint(decision.model, decision.version),
                )
                for it in inference.items
            ],
        },
        "contract": contract_plan(policy.spec(decision.model, decision.version), policy.base_dir),
        "why": decision.reason,
        "skipped": [
            {"route": name, "why": why} for name, why in policy.skipped_routes(facts, route.name)
        ],
    }


def format_explanation(e: Mapping[str, Any]) -> str:
    """Human-readable lines, one fact per line."""
    version = e["version"] + (
        f" (label {', '.join(e['version_labels'])})" if e["version_labels"] else ""
    )
    lines = [
        f"rule:       {e['rule']}",
        f"model:      {e['model']}",
        f"version:    {version}",
    ]
    if e["experiment"]:
        a = e["assignment"] or {}
        unit = f"unit {a.get('unit')!r}" if a.get("sticky") else "random unit (no routing.unit)"
        lines.append(
            f"experiment: {e['experiment']}  arm: {e['arm']}  "
            f"(bucket {a.get('bucket')} of 10000, {unit})"
        )
        if e["shadow"]:
            lines.append(
                f"shadow:     {e['shadow']} (arm {e['shadow_arm']}, mirrored; control answers)"
            )
    order_note = (
        ""
        if e["strategy"] == "pinned"
        else f" (policy order; a live gateway reorders by {e['strategy']})"
    )
    lines += [
        f"targets:    {', '.join(e['targets'])}{order_note}",
        f"fallback:   {', '.join(e['fallback']) or '-'}",
        f"budget:     {_or_dash(e['latency_budget_ms'], ' ms')}"
        + (" (strict: 503 when no target can meet it)" if e["strict"] else ""),
        f"resilience: timeout {e['timeout_ms']:g} ms, retries {e['retries']}, "
        f"hedge {_or_dash(e['hedge_after_ms'], '' if e['hedge_after_ms'] == 'p95' else ' ms')}",
        f"cache:      ttl {e['cache']['ttl_s']:g} s, mode {e['cache']['mode']}",
    ]
    lines += [f"  key[{i}]:   {k}" for i, k in enumerate(e["cache"]["keys"])]
    if e.get("contract"):
        lines += _contract_lines(e["contract"])
    lines.append(f"why:        {e['why']}")
    lines += [f"  skipped {s['route']}: {s['why']}" for s in e.get("skipped", [])]
    return "\n".join(lines)


def _contract_lines(c: Mapping[str, Any]) -> list[str]:
    remote = c["remote_model"] + (f" version {c['remote_version']}" if c["remote_version"] else "")
    lines = [f"contract:   {c['protocol']}, model {remote}"]
    if c.get("signature_name"):
        lines.append(f"  signature: {c['signature_name']}")
    if c.get("error"):
        return [*lines, f"  refused:  {c['error']}"]

    def tensor(t: Mapping[str, Any]) -> str:
        return f"{t['name']} {t['datatype']} {t['shape']}"

    for key, tensors in c["inputs"].items():
        lines.append(f"  in  {key:<9} -> {', '.join(tensor(t) for t in tensors)}")
    for key, t in c["outputs"].items():
        lines.append(f"  out {key:<9} <- {tensor(t)}")
    lines += [f"  process:  {note}" for note in c["processing"]]
    lines.append(f"  checked:  {c['checked']} (-1 = any)")
    return lines


def _or_dash(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:g}{unit}" if isinstance(value, float | int) else f"{value}{unit}"


def explain_json(policy: CompiledPolicy, request: Mapping[str, Any], **kw: Any) -> str:
    return json.dumps(explain(policy, request, **kw), indent=2)
