"""What the KServe v2 door sits on: the whole gateway, or one backend (``prism worker``).

The door speaks HTTP and tensors only; a :class:`ModelServer` answers the questions behind
it (which models, which versions, ready or not, run this). :class:`PipelineModelServer`
answers them from the policy and runs requests through :meth:`Pipeline.infer` (policy,
cache, experiments); ``prism.gateway.worker.BackendModelServer`` answers them for a single
in-process backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from prism.backends import Capabilities, Modality, Output, Task

from ..inference import Inference
from ..recording import RequestRecord
from .native import route_headers

if TYPE_CHECKING:
    from ..policy import CompiledPolicy
    from ..runtime import Runtime


@dataclass(frozen=True)
class ServedModel:
    """One model version as a door describes it."""

    name: str
    version: str
    versions: tuple[str, ...]
    modalities: frozenset[Modality]
    tasks: frozenset[Task]
    dim: int | None = None


@dataclass
class Answer:
    model: str
    version: str
    outputs: list[Output]
    #: extra response headers (the native door's x-prism-* decision headers)
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ModelServer(Protocol):
    async def ready(self) -> bool: ...

    def models(self) -> list[ServedModel]: ...

    def describe(self, model: str, version: str | None) -> ServedModel:
        """Raises ModelNotFound / VersionNotFound."""
        ...

    async def model_ready(self, model: ServedModel) -> bool: ...

    async def infer(self, inference: Inference, record: RequestRecord) -> Answer:
        """Run ``inference`` (its model and version name one of :meth:`models`)."""
        ...


def describe_capabilities(
    name: str,
    version: str,
    versions: Sequence[str],
    caps: Capabilities | None,
    modalities: Sequence[Modality] = (),
    tasks: frozenset[Task] = frozenset(),
) -> ServedModel:
    """Declared (policy) modalities/tasks win; else the backend's; else everything."""
    return ServedModel(
        name=name,
        version=version,
        versions=tuple(versions),
        modalities=frozenset(modalities) or (caps.modalities if caps else frozenset(Modality)),
        tasks=tasks or (caps.tasks if caps else frozenset(Task)),
        dim=caps.dim if caps else None,
    )


_INPUTS_BY_MODALITY = {"text": ("text",), "image": ("image",), "user": ("user", "history")}
_TASK_OUTPUTS: dict[Task, list[tuple[str, str]]] = {
    Task.EMBED: [("embedding", "FP32")],
    Task.CLASSIFY: [("label", "BYTES"), ("score", "FP32")],
    Task.RECOMMEND: [("item", "BYTES"), ("score", "FP32")],
}


def model_metadata(m: ServedModel) -> dict[str, Any]:
    inputs = [
        {"name": name, "datatype": "BYTES", "shape": [-1]}
        for modality in ("text", "image", "user")
        if modality in m.modalities
        for name in _INPUTS_BY_MODALITY[modality]
    ]
    outputs: dict[str, dict[str, Any]] = {}
    for task in (t for t in Task if t in m.tasks):
        for name, datatype in _TASK_OUTPUTS[task]:
            width = m.dim if name == "embedding" and m.dim else -1
            outputs.setdefault(name, {"name": name, "datatype": datatype, "shape": [-1, width]})
    return {
        "name": m.name,
        "versions": list(m.versions),
        "platform": "prism",
        "inputs": inputs,
        "outputs": list(outputs.values()),
    }


_TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}


def model_config(m: ServedModel) -> dict[str, Any]:
    """Triton's ``GET .../config`` view of a model (what perf_analyzer and Triton's client
    examples read). Shapes carry their row dimension, so ``max_batch_size`` is 0, as for a
    Triton model that batches in its own dims; Prism batches across requests regardless."""
    meta = model_metadata(m)

    def tensor(t: dict[str, Any]) -> dict[str, Any]:
        return {"name": t["name"], "data_type": _TRITON_TYPES[t["datatype"]], "dims": t["shape"]}

    return {
        "name": m.name,
        "platform": "prism",
        "backend": "prism",
        "max_batch_size": 0,
        "version_policy": {"specific": {"versions": list(m.versions)}},
        "input": [tensor(t) for t in meta["inputs"]],
        "output": [tensor(t) for t in meta["outputs"]],
        "parameters": {"tasks": {"string_value": ",".join(t.value for t in Task if t in m.tasks)}},
    }


class PipelineModelServer:
    """The gateway behind the KServe door: every request goes through the pipeline."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        #: (model, version) -> the backend's capabilities and the description made from them
        #: under ``_policy``: the doors describe the model of every request
        self._described: dict[tuple[str, str], tuple[Capabilities | None, ServedModel]] = {}
        self._policy: CompiledPolicy | None = None

    async def ready(self) -> bool:
        return self.rt.ready

    def describe(self, model: str, version: str | None) -> ServedModel:
        policy = self.rt.policy
        resolved = policy.resolve_version(model, version)
        caps = self.rt.deployments.capabilities(model, resolved)
        if policy is not self._policy:  # a reload: describe afresh
            self._described.clear()
            self._policy = policy
        known = self._described.get((model, resolved))
        if known is not None and known[0] is caps:
            return known[1]
        entry = policy.models[model]
        served = describe_capabilities(
            model, resolved, list(entry.versions), caps, entry.modalities, entry.tasks
        )
        self._described[(model, resolved)] = (caps, served)
        return served

    def models(self) -> list[ServedModel]:
        out: list[ServedModel] = []
        for name, entry in self.rt.policy.models.items():
            for version in entry.versions:
                out.append(self.describe(name, version))
        return out

    async def model_ready(self, model: ServedModel) -> bool:
        for dep in self.rt.deployments.of_version(model.name, model.version):
            if dep.ready and await dep.backend.health():
                return True
        return False

    async def infer(self, inference: Inference, record: RequestRecord) -> Answer:
        resp = await self.rt.pipeline.infer(inference, record)
        return Answer(resp.model, resp.version, resp.outputs, route_headers(resp))
