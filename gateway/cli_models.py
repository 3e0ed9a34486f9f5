"""``prism demo ...`` and ``prism catalog build``: building model artefacts offline."""

from __future__ import annotations

import argparse
import base64
import io
import random
import sys
from pathlib import Path

#: the demo model must be at least this good, or the build fails (the issue's bar)
MIN_DEMO_ACCURACY = 0.9


def _demo_build(args: argparse.Namespace) -> int:
    from prism.backends.demo import build_demo

    built = build_demo(Path(args.out), seed=args.seed, force=args.force)
    accuracy = built.zero_shot_accuracy  # the build's last line has already said it
    if accuracy < MIN_DEMO_ACCURACY:
        print(
            f"accuracy below {MIN_DEMO_ACCURACY:.0%}: the demo model is not good enough",
            file=sys.stderr,
        )
        return 1
    return 0


def _demo_sample(args: argparse.Namespace) -> int:
    from prism.backends.demo import CLASSES, render

    wanted = args.label.lower().removeprefix("a ").removeprefix("an ").strip()
    classes = {f"{color} {shape}": (color, shape) for color, shape in CLASSES}
    if wanted not in classes:
        known = ", ".join(sorted(classes))
        print(f"unknown class {args.label!r}; one of: {known}", file=sys.stderr)
        return 2
    image = render(random.Random(args.seed), *classes[wanted], size=args.size)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    if args.base64:
        print(base64.b64encode(buf.getvalue()).decode())
    else:
        out = Path(args.out or f"{wanted.replace(' ', '-')}.png")
        out.write_bytes(buf.getvalue())
        print(out)
    return 0


def _catalog_build(args: argparse.Namespace) -> int:
    from prism.backends import OpenClipSpec, resolve_device
    from prism.backends._catalog import CatalogError, build_catalog
    from prism.backends._open_clip import OpenClipModel

    if args.weights is not None:
        encoder = OpenClipModel(
            args.arch, weights=Path(args.weights), device=resolve_device(args.device)
        )
    else:
        from .policy import PolicyLoadError, compile_policy_file

        try:
            policy = compile_policy_file(str(args.policy))
        except PolicyLoadError as exc:
            print(exc.detail, file=sys.stderr)
            return 2
        model, _, version = args.model.partition("@")
        try:
            version = policy.resolve_version(model, version or None)
        except Exception as exc:
            print(str(exc), file=sys.stderr)
            return 2
        spec = policy.spec(model, version)
        if not isinstance(spec, OpenClipSpec):
            print(f"{args.model} is not an open-clip model", file=sys.stderr)
            return 2
        base = Path(args.data_dir) if args.data_dir else Path.cwd()
        encoder = OpenClipModel.from_spec(spec, base, resolve_device(spec.device))
    encoder.load()
    try:
        report = build_catalog(Path(args.catalog), Path(args.out), encoder)
    except CatalogError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(report)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="the self-trained demo models",
        description="Build and try the demo CLIP and catalogue.",
    )
    dsub = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    build = dsub.add_parser(
        "build",
        help="train the demo CLIP and build the demo catalogue",
        description="Generate a shapes data set, train demo-clip with open_clip's ClipLoss, check "
        "zero-shot accuracy on 500 held-out images (exit 1 below 90 percent), and build a 10,000-item "
        "catalogue. Deterministic for a seed; artefacts already built are kept unless --force.",
    )
    build.add_argument("--out", default="models", help="output folder (default: models)")
    build.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    build.add_argument("--force", action="store_true", help="rebuild even if current")
    build.set_defaults(handler=_demo_build)
    sample = dsub.add_parser(
        "sample",
        help="draw one demo image",
        description="Draw a fresh image of a demo class, e.g. 'a green triangle'.",
    )
    sample.add_argument("label", help="class, e.g. 'a red circle'")
    sample.add_argument(
        "--base64", action="store_true", help="print the PNG as base64 instead of writing a file"
    )
    sample.add_argument("--out", help="PNG file to write (default: LABEL.png)")
    sample.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    sample.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    sample.set_defaults(handler=_demo_sample)

    catalog = sub.add_parser(
        "catalog", help="item catalogues for the recommender", description="Build item catalogues."
    )
    csub = catalog.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    cb = csub.add_parser(
        "build",
        help="embed a JSONL catalogue",
        description="Embed every item of a JSONL catalogue (id, title, optional image path or "
        "base64, optional tags) with an open_clip model into a compact artefact folder "
        "(float16 matrix + ids) for `kind: recommender`.",
    )
    cb.add_argument("catalog", type=Path, help="CATALOG.jsonl")
    cb.add_argument("--out", required=True, type=Path, help="artefact folder to write")
    which = cb.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="NAME@VERSION (or label) of an open-clip model in --policy")
    which.add_argument("--weights", help="open_clip checkpoint (with --arch)")
    cb.add_argument(
        "--policy", type=Path, default=Path("policies/default.yaml"), help="policy naming --model"
    )
    cb.add_argument("--data-dir", help="folder the policy's relative paths resolve in (default: .)")
    cb.add_argument("--arch", default="demo-clip", help="open_clip architecture for --weights")
    cb.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the encoder runs (auto: cuda when available)",
    )
    cb.set_defaults(handler=_catalog_build)
