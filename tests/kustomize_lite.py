"""Render deploy/'s Kustomize overlays without kubectl: the subset of Kustomize they use.

Supported, and nothing else (a kustomization with any other field is refused, so a test never
passes on a field this renderer silently ignored):

- ``resources``: YAML files, or folders holding a ``kustomization.yaml`` (rendered first);
- ``namespace``: set on every namespaced object;
- ``patches`` with ``path``: strategic-merge patches, one object per file, matched by kind and
  name. Mappings merge key by key; lists of mappings that all carry ``name`` (containers, env,
  volumes, volumeMounts) merge item by item on ``name``; other lists are replaced;
  ``$patch: delete`` at the top removes the object;
- ``replicas``: ``{name, count}`` sets a Deployment's ``spec.replicas``;
- ``images``: ``{name, newName, newTag}`` rewrites container images named ``name[:tag]``.

That is Kustomize's documented behaviour for these fields on these kinds (Deployment,
Service, ConfigMap, Secret, HorizontalPodAutoscaler, PodDisruptionBudget, ScaledObject).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "patches", "replicas", "images"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}

Object = dict[str, Any]


class UnsupportedKustomization(ValueError):
    pass


def load_objects(path: Path) -> list[Object]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(folder: Path) -> list[Object]:
    """The objects ``kubectl kustomize folder`` would print (for the supported subset)."""
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise UnsupportedKustomization(f"{folder}: fields not rendered here: {sorted(unknown)}")
    objects: list[Object] = []
    for res in kust.get("resources", []):
        path = (folder / res).resolve()
        objects += render(path) if path.is_dir() else load_objects(path)
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise UnsupportedKustomization(f"{folder}: only patches with a path: {patch}")
        docs = load_objects(folder / patch["path"])
        if len(docs) != 1:
            raise UnsupportedKustomization(f"{patch['path']}: one object per patch file")
        objects = _apply_patch(objects, docs[0], folder / patch["path"])
    for item in kust.get("replicas", []):
        target = _find(objects, "Deployment", item["name"], folder)
        target["spec"]["replicas"] = item["count"]
    for item in kust.get("images", []):
        _set_images(objects, item)
    if "namespace" in kust:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = kust["namespace"]
    return objects


def _find(objects: list[Object], kind: str, name: str, where: Path) -> Object:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise UnsupportedKustomization(f"{where}: no {kind}/{name} to change")


def _apply_patch(objects: list[Object], patch: Object, where: Path) -> list[Object]:
    target = _find(objects, patch["kind"], patch["metadata"]["name"], where)
    if patch.get("$patch") == "delete":
        return [o for o in objects if o is not target]
    body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
    merged = merge(target, body)
    return [merged if o is target else o for o in objects]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge of ``patch`` into ``base`` (a new value; neither is changed)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if _named_list(base) and _named_list(patch):
        out_list = copy.deepcopy(base)
        for item in patch:
            for i, existing in enumerate(out_list):
                if existing["name"] == item["name"]:
                    out_list[i] = merge(existing, item)
                    break
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, dict) and "name" in i for i in value)
    )


def _set_images(objects: list[Object], item: dict[str, str]) -> None:
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            name, _, tag = container["image"].partition(":")
            if name == item["name"]:
                new_tag = item.get("newTag", tag)
                new_name = item.get("newName", name)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
