"""Test peer: a real KServe ``ModelServer`` speaking the V1 protocol (run with .venv-peers).

    python tests/peers/kserve_peer.py --http-port P --grpc-port G

``embedder`` takes rows (``instances``: ``[{"TEXT": "..."}, ...]``) or columns
(``inputs``: ``{"TEXT": [...]}``) and answers ``predictions`` / ``outputs`` with an 8-wide
``EMBEDDING`` per row, the same vector as the PyTriton peer's embedder. A text of
``"boom"`` is refused the way KServe refuses bad input (400 ``{"error": "..."}``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import numpy as np
from kserve import Model, ModelServer
from kserve.errors import InvalidInput


def _vector(text: bytes, dim: int) -> list[float]:
    digest = hashlib.sha256(text).digest()
    return (
        (np.frombuffer(digest[:dim], dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    ).tolist()


def _text(value: Any) -> bytes:
    while isinstance(value, list):  # [n, 1] rows arrive as one-element lists
        value = value[0]
    if isinstance(value, dict) and "b64" in value:
        import base64

        return base64.b64decode(value["b64"])
    return str(value).encode()


class Embedder(Model):
    def __init__(self) -> None:
        super().__init__("embedder")
        self.ready = True

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        if isinstance(payload, bytes | str):  # the V1 body as it came, JSON not yet parsed
            payload = json.loads(payload)
        if "instances" in payload:
            texts = [_text(row["TEXT"]) for row in payload["instances"]]
        else:
            texts = [_text(v) for v in payload["inputs"]["TEXT"]]
        if b"boom" in texts:
            raise InvalidInput("cannot embed 'boom'")
        vectors = [_vector(t, 8) for t in texts]
        if "instances" in payload:
            return {"predictions": vectors}
        return {"outputs": vectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    args = parser.parse_args()
    ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=False, workers=1
    ).start([Embedder()])


if __name__ == "__main__":
    main()
