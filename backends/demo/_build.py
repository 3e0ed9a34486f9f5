"""``build_demo``: train the demo CLIP, draw the demo catalogue, embed it; skip what is current.

Layout under ``out_dir`` (``models/`` by default, gitignored):

- ``demo-clip.pt`` + ``demo-clip.json``: open_clip checkpoint and its model config;
- ``demo-items/``: the catalogue source (``items.jsonl`` + ``images/``);
- ``demo-catalog/``: the built catalogue the default policy's recommender serves;
- ``demo.json``: the manifest (seed, sizes, timings, zero-shot accuracy).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import _items, _train

MANIFEST = "demo.json"
LOCK_FILE = ".demo.lock"
#: bump when the data set, model or layout changes: older artefacts are rebuilt
DEMO_VERSION = 5
#: items in the demo catalogue
CATALOG_ITEMS = 10_000


@dataclass(frozen=True)
class DemoArtefacts:
    """Where the demo files are, and what the build measured."""

    out_dir: Path
    weights: Path
    config: Path
    items_jsonl: Path
    catalog_dir: Path
    seed: int
    arch: str = _train.ARCH
    steps: int = 0
    train_seconds: float = 0.0
    zero_shot_accuracy: float = 0.0
    eval_images: int = 0
    catalog_items: int = 0
    catalog_seconds: float = 0.0
    #: phases this call actually ran (empty when everything was current)
    built: tuple[str, ...] = field(default=())

    def manifest(self) -> dict[str, Any]:
        """What ``demo.json`` records (paths are implied by ``out_dir``)."""
        data = {k: v for k, v in asdict(self).items() if k not in _PATH_FIELDS}
        return {"version": DEMO_VERSION, **data}


_PATH_FIELDS = frozenset({"out_dir", "weights", "config", "items_jsonl", "catalog_dir", "built"})


class DemoPaths(NamedTuple):
    """The demo's file locations under one folder."""

    weights: Path
    config: Path
    items_jsonl: Path
    catalog_dir: Path


def demo_paths(out_dir: Path) -> DemoPaths:
    """The demo's file locations under ``out_dir``."""
    return DemoPaths(
        weights=out_dir / f"{_train.ARCH}.pt",
        config=out_dir / f"{_train.ARCH}.json",
        items_jsonl=out_dir / "demo-items" / "items.jsonl",
        catalog_dir=out_dir / "demo-catalog",
    )


def load_manifest(out_dir: Path) -> DemoArtefacts | None:
    """The artefacts recorded in ``out_dir/demo.json`` if they are complete and current."""
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != DEMO_VERSION:
        return None
    paths = demo_paths(out_dir)
    if not all(p.exists() for p in paths) or not (paths.catalog_dir / "meta.json").exists():
        return None
    return DemoArtefacts(
        out_dir=out_dir,
        **paths._asdict(),
        seed=int(data["seed"]),
        steps=int(data["steps"]),
        train_seconds=float(data["train_seconds"]),
        zero_shot_accuracy=float(data["zero_shot_accuracy"]),
        eval_images=int(data["eval_images"]),
        catalog_items=int(data["catalog_items"]),
        catalog_seconds=float(data["catalog_seconds"]),
    )


def _say(message: str) -> None:
    print(message, flush=True)  # progress bars go to stderr, these lines to stdout


def build_demo(
    out_dir: Path,
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    train_config: _train.TrainConfig | None = None,
    catalog_items: int = CATALOG_ITEMS,
) -> DemoArtefacts:
    """Build (or find current) demo artefacts in ``out_dir``; deterministic for a ``seed``.

    Phases, each with a progress bar: train ``demo-clip`` (about 4 minutes on 2 cores) and
    measure its zero-shot accuracy on 500 fresh images; draw ``catalog_items`` catalogue
    items; embed them into ``demo-catalog/``. Without ``force``, artefacts already built with
    the same seed are returned as they are.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir / LOCK_FILE):
        current = None if force else load_manifest(out_dir)
        if current is not None and current.seed == seed:
            _say(
                f"demo artefacts in {out_dir} are current (seed {seed}, zero-shot accuracy "
                f"{current.zero_shot_accuracy:.1%}); --force rebuilds them"
            )
            return current
        return _build(out_dir, seed, progress, train_config, catalog_items)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One build per folder at a time, across processes (a second waits, then finds it done)."""
    with path.open("a") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    out_dir: Path,
    seed: int,
    progress: bool,
    train_config: _train.TrainConfig | None,
    catalog_items: int,
) -> DemoArtefacts:
    paths = demo_paths(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # incomplete until the end

    _say(f"[1/3] training {_train.ARCH} (seed {seed})")
    trained = _train.train_demo_clip(
        paths.weights, seed=seed, config=train_config, progress=progress
    )
    shutil.copyfile(_train.CONFIG_DIR / f"{_train.ARCH}.json", paths.config)
    _say(
        f"      {trained.steps} steps, {trained.images_seen} images in "
        f"{trained.train_seconds:.1f} s; zero-shot accuracy on {trained.eval_images} held-out "
        f"images: {trained.zero_shot_accuracy:.1%}"
    )

    _say(f"[2/3] drawing {catalog_items} catalogue items")
    items_dir = paths.items_jsonl.parent
    shutil.rmtree(items_dir, ignore_errors=True)
    started = time.perf_counter()
    _items.write_demo_items(items_dir, count=catalog_items, seed=seed, progress=progress)
    drawn_s = time.perf_counter() - started

    _say("[3/3] embedding the catalogue")
    from .._catalog import build_catalog
    from .._open_clip import OpenClipModel

    encoder = OpenClipModel(_train.ARCH, weights=paths.weights.resolve(), device="cpu")
    with _train.threads(train_config.threads if train_config else 2):
        encoder.load()
        report = build_catalog(paths.items_jsonl, paths.catalog_dir, encoder, progress)
    encoder.close()
    artefacts = DemoArtefacts(
        out_dir=out_dir,
        **paths._asdict(),
        seed=seed,
        steps=trained.steps,
        train_seconds=round(trained.train_seconds, 2),
        zero_shot_accuracy=trained.zero_shot_accuracy,
        eval_images=trained.eval_images,
        catalog_items=report.count,
        catalog_seconds=round(drawn_s + report.seconds, 2),
        built=("train", "items", "catalog"),
    )
    manifest = json.dumps(artefacts.manifest(), indent=2) + "\n"
    (out_dir / MANIFEST).write_text(manifest, encoding="utf-8")
    _say(
        f"demo ready in {out_dir}: {_train.ARCH} zero-shot accuracy "
        f"{trained.zero_shot_accuracy:.1%} ({trained.eval_images} held-out images), "
        f"{report.count} catalogue items embedded in {drawn_s + report.seconds:.1f} s"
    )
    return artefacts
