"""Overrides as documents: composing them over a file, promote/rollback history, and the
stores' compare-and-set under concurrent edits (real Redis, a real file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from prism.backends import Conflict
from prism.gateway.policy import parse_policy
from prism.gateway.repository import (
    FileOverrideStore,
    Overrides,
    RedisOverrideStore,
    compose,
    move_label,
    roll_back,
    set_loaded,
)

FILE = parse_policy(
    """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake}
      "2": {backend: local, kind: fake, seed: 2}
      "3": {backend: local, kind: fake, seed: 3}
    labels: {stable: "1"}
    unloaded: ["3"]
routes:
  - {name: text, model: m, version: stable}
"""
)


def test_promote_twice_then_roll_back_twice_returns_to_the_file() -> None:
    ov = move_label(FILE, Overrides(), "m", "stable", "2")
    assert compose(FILE, ov).document.models["m"].labels == {"stable": "2"}
    ov = set_loaded(FILE, ov, "m", "3", True)
    ov = move_label(FILE, ov, "m", "stable", "3")
    ov = move_label(FILE, ov, "m", "canary", "2")  # a label the file does not have
    doc = compose(FILE, ov).document
    assert (
        doc.models["m"].labels == {"stable": "3", "canary": "2"} and doc.models["m"].unloaded == []
    )
    ov = roll_back(FILE, ov, "m", "stable")
    assert compose(FILE, ov).document.models["m"].labels["stable"] == "2"
    ov = roll_back(FILE, ov, "m", "stable")
    assert ov.labels == {"m": {"canary": "2"}}  # back at the file's value: no override left
    ov = roll_back(FILE, ov, "m", "canary")
    assert ov.labels == {} and compose(FILE, ov).document.models["m"].labels == {"stable": "1"}
    with pytest.raises(Conflict, match="nothing to roll back"):
        roll_back(FILE, ov, "m", "stable")


def test_an_unloaded_version_cannot_take_a_label() -> None:
    with pytest.raises(Conflict, match="unloaded: load it first"):
        move_label(FILE, Overrides(), "m", "stable", "3")


def test_overrides_the_file_no_longer_allows_are_reported_not_applied() -> None:
    ov = move_label(FILE, set_loaded(FILE, Overrides(), "m", "3", True), "m", "stable", "3")
    smaller = parse_policy(
        """
version: 1
models:
  m:
    versions: {"1": {backend: local, kind: fake}, "2": {backend: local, kind: fake}}
    labels: {stable: "1"}
"""
    )
    composed = compose(smaller, ov)
    assert composed.document.models["m"].labels == {"stable": "1"}
    assert sorted((s["kind"], s["version"]) for s in composed.stale) == [
        ("label", "3"),
        ("version", "3"),
    ]


async def _race(store: RedisOverrideStore | FileOverrideStore, tag: str) -> Overrides:
    versions = ["1", "2"]

    async def promote(i: int) -> None:
        await store.update(lambda cur: move_label(FILE, cur, "m", f"{tag}{i}", versions[i % 2]))

    await asyncio.gather(*(promote(i) for i in range(12)))
    return await store.read()


async def test_concurrent_edits_in_redis_all_land(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/6"
    redis.Redis.from_url(url).flushdb()
    stores = [RedisOverrideStore(url) for _ in range(3)]  # three "replicas"
    try:
        results = await asyncio.gather(*(_race(s, f"r{n}-") for n, s in enumerate(stores)))
        final = await stores[0].read()
        assert len(final.labels["m"]) == 36 and final.revision == 36
        assert await stores[1].revision() == 36 and results
        keys = sorted(k.decode() for k in redis.Redis.from_url(url).keys("*"))
        assert keys == ["prism:{overrides}:doc", "prism:{overrides}:rev"]  # one hash slot
    finally:
        for s in stores:
            await s.aclose()


async def test_concurrent_edits_in_the_file_all_land(tmp_path: Path) -> None:
    path = tmp_path / ".policy.yaml.overrides.json"
    stores = [FileOverrideStore(path) for _ in range(3)]
    await asyncio.gather(*(_race(s, f"f{n}-") for n, s in enumerate(stores)))
    final = await FileOverrideStore(path).read()
    assert len(final.labels["m"]) == 36 and final.revision == 36


def test_an_edit_leaves_the_models_of_another_policy_alone() -> None:
    shared = Overrides(labels={"elsewhere": {"stable": "7"}})  # a gateway with another file
    ov = move_label(FILE, shared, "m", "stable", "2")
    assert ov.labels == {"elsewhere": {"stable": "7"}, "m": {"stable": "2"}}
    assert compose(FILE, ov).stale[0]["model"] == "elsewhere"  # reported here, not dropped
