"""Route and version resolution: first match by modality, task, model, headers; ids and labels."""

from __future__ import annotations

import pytest

from prism.backends import Modality, ModelNotFound, NoRoute, Task, VersionNotFound
from prism.gateway.policy import RequestFacts

from .conftest import compile_text

POLICY = """
version: 1
models:
  text-embed:
    versions:
      "1": {backend: local, kind: fake, device: cpu}
      "2": {backend: local, kind: fake, device: cpu}
      "3": {backend: kserve, url: "http://a:9000", remote_model: t, replicas: ["http://b:9000"]}
    labels: {stable: "1", canary: "2"}
  clip:
    versions:
      "1": {backend: local, kind: fake, device: cpu}
  unrouted:
    versions:
      "7": {backend: local, kind: fake, device: cpu}
routes:
  - name: tenant-a
    match: {modality: [text], headers: {X-Tenant: a}}
    model: text-embed
    version: canary
  - name: classify
    match: {task: classify}
    model: clip
  - name: images
    match: {modality: [image, text]}
    model: clip
    fallback: [{model: text-embed, version: stable}]
  - name: remote
    match: {model: text-embed}
    model: text-embed
    version: "3"
"""

TEXT = frozenset({Modality.TEXT})


def facts(modalities: frozenset[Modality] = TEXT, **kw: object) -> RequestFacts:
    return RequestFacts(modalities=modalities, task=kw.pop("task", Task.EMBED), **kw)  # type: ignore[arg-type]


def test_first_matching_route_wins() -> None:
    p = compile_text(POLICY)
    assert p.decide(facts(headers={"x-tenant": "a"})).rule == "tenant-a"
    assert p.decide(facts(headers={"x-tenant": "b"})).rule == "images"  # text is in [image, text]
    assert p.decide(facts(task=Task.CLASSIFY, headers={"x-tenant": "a"})).rule == "tenant-a"
    assert p.decide(facts(frozenset({Modality.IMAGE}), task=Task.CLASSIFY)).rule == "classify"
    assert p.decide(facts(frozenset({Modality.IMAGE, Modality.TEXT}))).rule == "images"


def test_match_by_model_and_replicas_become_targets() -> None:
    p = compile_text(POLICY)
    d = p.decide(facts(model="text-embed"))
    assert d.rule == "remote" and d.version == "3"
    assert [t.key for t in d.targets] == [
        "text-embed@3/http://a:9000",
        "text-embed@3/http://b:9000",
    ]


def test_labels_and_ids_resolve() -> None:
    p = compile_text(POLICY)
    d = p.decide(facts(headers={"x-tenant": "a"}))
    assert (d.model, d.version) == ("text-embed", "2")  # label canary
    assert p.decide(facts(model="text-embed", version="stable")).version == "1"
    assert p.decide(facts(model="text-embed", version="2")).version == "2"
    assert p.decide(facts(frozenset({Modality.IMAGE}))).fallback[0].key == "text-embed@1/local"


def test_unknown_names_are_the_callers_404s() -> None:
    p = compile_text(POLICY)
    with pytest.raises(VersionNotFound, match="known: 1, 2, 3, canary, stable"):
        p.decide(facts(model="text-embed", version="9"))
    with pytest.raises(ModelNotFound):
        p.decide(facts(model="nope"))
    with pytest.raises(NoRoute):
        p.decide(facts(frozenset({Modality.USER}), task=Task.RECOMMEND))


def test_a_model_no_route_mentions_is_still_addressable() -> None:
    d = compile_text(POLICY).decide(facts(frozenset({Modality.USER}), model="unrouted"))
    assert (d.rule, d.version) == ("model:unrouted", "7")


def test_moving_a_label_changes_the_version_after_recompiling() -> None:
    before = compile_text(POLICY)
    promoted = compile_text(
        POLICY.replace('labels: {stable: "1", canary: "2"}', 'labels: {stable: "2", canary: "2"}')
    )
    request = facts(model="text-embed", version="stable")
    assert before.decide(request).version == "1"
    assert promoted.decide(request).version == "2"
    assert before.digest != promoted.digest
