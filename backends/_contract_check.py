"""One remote version's contract over its life: checked at start, re-checked whenever its
upstream comes back (a restarted server may serve another model) and at each policy reload.

Whatever the protocol (KServe v2 over HTTP or gRPC, KServe V1 / TF Serving), a backend with
a ``tensors:`` contract holds one :class:`ContractCheck`: the backend reads the model's
signature its own way and hands it to :meth:`ContractCheck.check`; requests get the
resolved contract from :meth:`ContractCheck.require`, which is a 503 naming the mismatch
(never a 502 per request) while the model contradicts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._base import Capabilities, InputItem, Output, Task
from ._contract import ContractMismatch, ResolvedContract, Signature
from ._contract_resolve import resolve_contract
from ._errors import NotReady
from ._tensor_specs import ImagePixels, PooledEmbedding, TensorContract, TokenizedText
from ._tensors import Tensor

log = logging.getLogger("prism.remote")


class ContractCheck:
    def __init__(self, spec: TensorContract, base_dir: Path, name: str) -> None:
        self.spec = spec
        self.base_dir = base_dir
        self.name = name
        #: resolved without the model's metadata until a check succeeds
        self.contract: ResolvedContract | None = None
        self.checked = False
        self.mismatch: ContractMismatch | None = None
        # tokenising and image decoding cost real CPU: off the event loop; a plain
        # BYTES-in / FP32-out contract is cheaper inline than a thread hop
        self.heavy = isinstance(spec.inputs.text, TokenizedText) or isinstance(
            spec.inputs.image, ImagePixels
        )
        self.heavy |= isinstance(spec.outputs.embedding, PooledEmbedding)

    async def preflight(self) -> None:
        """Load the local files (tokenizer, labels, ids) before any upstream is asked: a
        missing file fails the load whether or not the upstream is up."""
        self.contract = await asyncio.to_thread(resolve_contract, self.spec, None, self.base_dir)

    async def check(self, signature: Signature | None) -> ContractMismatch | None:
        """Resolve against the model's signature (None: it offers none); remembers and
        returns a mismatch instead of raising, so probes can report it."""
        try:
            resolved = await asyncio.to_thread(
                resolve_contract, self.spec, signature, self.base_dir
            )
        except ContractMismatch as exc:
            if self.mismatch is None or str(self.mismatch) != str(exc):
                log.error("%s: the model contradicts its tensor contract: %s", self.name, exc)
            self.mismatch = exc
            return exc
        self.contract, self.checked, self.mismatch = resolved, True, None
        return None

    def require(self) -> ResolvedContract:
        if self.mismatch is not None:
            raise NotReady(
                f"{self.name}: the upstream model contradicts its tensor contract "
                f"({'.'.join(map(str, self.mismatch.where))}): {self.mismatch}",
                retry_after_s=5,
            )
        if self.contract is None or not self.checked:
            raise NotReady(
                f"{self.name}: the upstream's metadata has not been read yet", retry_after_s=5
            )
        return self.contract

    def capabilities(self) -> Capabilities:
        assert self.contract is not None, "preflight() runs first"
        return self.contract.capabilities

    async def encode(
        self, contract: ResolvedContract, items: Sequence[InputItem]
    ) -> tuple[list[Tensor], dict[str, Any]]:
        if self.heavy:
            return await asyncio.to_thread(contract.encode, items)
        return contract.encode(items)

    async def decode(
        self,
        contract: ResolvedContract,
        task: Task,
        tensors: Sequence[Tensor],
        n: int,
        state: Mapping[str, Any],
        parameters: Mapping[str, Any],
    ) -> list[Output]:
        if self.heavy:
            return await asyncio.to_thread(contract.decode, task, tensors, n, state, parameters)
        return contract.decode(task, tensors, n, state, parameters)


__all__ = ["ContractCheck"]
