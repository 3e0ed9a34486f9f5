"""``prism optimize MODEL@VERSION --variant V --out DIR``: a faster variant, measured, ready to
canary.

Reads the source version from a policy file, builds and measures the variant
(``prism.backends.optimize``), writes ``DIR/report.json|md|png`` and prints a policy snippet
that adds the variant as a version and runs it beside the source, as a header-opted canary or
as an A/B experiment, on the route that serves the source today.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from .cli_args import finite_seconds, positive_int


def _route_of(document: Any, model: str) -> str | None:
    """The first route that sends traffic to ``model``."""
    for route in document.routes:
        if any(ref.model == model for ref in route.target_refs):
            return str(route.name)
    return None


def policy_snippet(
    document: Any, model: str, version: str, variant: str, spec: dict[str, Any]
) -> str:
    """YAML to merge into the policy: the variant as a version, a canary route, an A/B arm."""
    new = f"{version}-{variant}"
    entry = document.models[model]
    labels = {**entry.labels, "canary": new}
    route = _route_of(document, model)
    models = {model: {"versions": {new: spec}, "labels": labels}}
    text = "# add the variant as a version of the model (keep the versions already there)\n"
    text += yaml.safe_dump({"models": models}, sort_keys=False, default_flow_style=None)
    canary: dict[str, Any] = {
        "name": f"{route or model}-canary",
        "match": {"headers": {"x-canary": "1"}},
        "model": model,
        "version": "canary",
        "fallback": [{"model": model, "version": version}],
    }
    if route is not None:
        canary["match"] = {**_route_match(document, route), **canary["match"]}
    text += (
        "# either: a canary for callers sending `x-canary: 1` (list it before the route "
        f"{route!r});\n# promote with `prism models promote {model}@{new}` (or `stable: {new}` here),\n"
        f"# roll back with `prism models rollback {model}`\n"
    )
    text += yaml.safe_dump({"routes": [canary]}, sort_keys=False, default_flow_style=None)
    if route is not None:
        experiment = {
            "route": route,
            "unit": "user",
            "arms": {
                "control": {"version": version, "weight": 90},
                "treatment": {"version": new, "weight": 10},
            },
            "guardrails": {"max_error_rate": 0.02, "min_samples": 200},
        }
        text += "# or: an A/B experiment on the same route, 10% of users on the variant\n"
        text += yaml.safe_dump(
            {"experiments": {f"{model}-{variant}": experiment}},
            sort_keys=False,
            default_flow_style=None,
        )
    return text


def _route_match(document: Any, name: str) -> dict[str, Any]:
    route = next(r for r in document.routes if r.name == name)
    match: dict[str, Any] = route.match.model_dump(mode="json", exclude_defaults=True)
    return match


def _optimize(args: argparse.Namespace) -> int:
    from prism.backends.optimize import OptimizeError, optimize_version, write_report

    from .policy import PolicyLoadError, compile_policy_file

    try:
        policy = compile_policy_file(str(args.policy))
    except PolicyLoadError as exc:
        print(exc.detail, file=sys.stderr)
        return 2
    model, _, wanted = args.source.partition("@")
    try:
        version = policy.resolve_version(model, wanted or None)
    except Exception as exc:
        print(str(exc), file=sys.stderr)
        return 2
    spec = policy.spec(model, version)
    out = Path(args.out)
    base = Path(args.data_dir) if args.data_dir else Path.cwd()
    try:
        report = optimize_version(
            spec,
            source=f"{model}@{version}",
            variant=args.variant,
            out_dir=out,
            base_dir=base,
            device=args.device,
            seconds=args.seconds,
            rounds=args.rounds,
            floor=args.floor,
            force=args.force,
        )
    except OptimizeError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. an unknown architecture or unreadable weights
        print(f"cannot load {model}@{version}: {exc}", file=sys.stderr)
        return 2
    snippet = ""
    if report["accepted"]:
        snippet = policy_snippet(
            policy.document, model, version, args.variant, report["version_spec"]
        )
    write_report(out, report, snippet)
    speed, size = report["items_per_s"], report["size_bytes"]
    print(
        f"\n{model}@{version} -> {args.variant}: "
        f"batch 1 {speed['source']['batch1']:.1f} -> {speed['variant']['batch1']:.1f}/s "
        f"({report['speedup_batch1']:.2f}x), batch 32 {speed['source']['batch32']:.1f} -> "
        f"{speed['variant']['batch32']:.1f}/s ({report['speedup_batch32']:.2f}x), "
        f"size {size['source'] / 1e6:.1f} -> {size['variant'] / 1e6:.1f} MB\n"
        f"agreement{' (images)' if 'zero_shot' in report else ''}: cosine mean "
        f"{report['cosine_mean']:.4f}, min {report['cosine_min']:.4f}, "
        f"Spearman {report['spearman']:.4f}"
    )
    if "zero_shot" in report:
        text, zs = report["text_agreement"], report["zero_shot"]
        print(
            f"texts: {speed['source']['text_batch32']:.1f} -> "
            f"{speed['variant']['text_batch32']:.1f}/s at batch 32 "
            f"({report['speedup_text_batch32']:.2f}x), cosine mean {text['cosine_mean']:.4f}, "
            f"min {text['cosine_min']:.4f}\n"
            f"zero-shot accuracy ({zs['images']} images, {zs['classes']} classes): "
            f"{zs['source']:.1%} -> {zs['variant']:.1%} ({100 * zs['change']:+.1f} pts), "
            f"same top class {zs['top1_agreement']:.1%}"
        )
    print(f"report: {out / 'report.md'} (+ report.json, report.png)")
    if not report["accepted"]:
        print(
            f"refused: cosine mean {report['cosine_mean']:.4f} is below the floor "
            f"{args.floor}; --force keeps it anyway",
            file=sys.stderr,
        )
        return 1
    print("\npolicy snippet (merge into your policy file):\n")
    print(snippet)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from prism.backends.optimize import (
        CLIP_VARIANTS,
        DEFAULT_FLOOR,
        DEFAULT_ROUNDS,
        DEFAULT_SECONDS,
        TEXT_VARIANTS,
    )

    cmd = sub.add_parser(
        "optimize",
        help="build a faster variant of a model version and measure it",
        description="Build a variant of a local text-encoder version or of both towers of a "
        "local open-clip version (onnx: ONNX Runtime fp32, served by kind onnx or onnx-clip; "
        "onnx-int8: ONNX Runtime dynamic int8; int8: torch dynamic int8 on CPU; bf16; fp16 on a "
        "GPU), measure it against the source on this machine (items/s at batch 1 and 32 side "
        "by side, images for CLIP, preprocessing included; size; cosine agreement; Spearman of "
        "pairwise similarities; for CLIP also text agreement and zero-shot accuracy before and "
        "after on the demo's labelled shapes), write DIR/report.json, report.md and report.png, "
        "and print a policy snippet that runs it as a canary or an A/B arm. A variant below "
        "the agreement floor is refused (exit 1).",
    )
    cmd.add_argument(
        "source", metavar="MODEL@VERSION", help="e.g. text-embed@1 or clip@1 (or a label)"
    )
    cmd.add_argument(
        "--variant",
        required=True,
        choices=list(dict.fromkeys((*TEXT_VARIANTS, *CLIP_VARIANTS))),
        help="what to build",
    )
    cmd.add_argument("--out", required=True, help="folder for the variant and its report")
    cmd.add_argument(
        "--policy", type=Path, default=Path("policies/default.yaml"), help="policy naming the model"
    )
    cmd.add_argument(
        "--data-dir", help="folder the policy's relative paths resolve in (default: .)"
    )
    cmd.add_argument(
        "--floor",
        type=float,
        default=DEFAULT_FLOOR,
        help=f"least cosine mean with the source (default {DEFAULT_FLOOR})",
    )
    cmd.add_argument("--force", action="store_true", help="keep a variant below the floor")
    cmd.add_argument(
        "--seconds",
        type=finite_seconds,
        default=DEFAULT_SECONDS,
        help=f"timing budget per batch size, both models (default {DEFAULT_SECONDS:g})",
    )
    cmd.add_argument(
        "--rounds",
        type=positive_int,
        default=DEFAULT_ROUNDS,
        help="rounds the budget is split into; the speed-up is the median of the rounds' "
        f"ratios (default {DEFAULT_ROUNDS})",
    )
    cmd.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where torch variants run (auto: cuda when available); ONNX variants run on CPU",
    )
    cmd.set_defaults(handler=_optimize)
