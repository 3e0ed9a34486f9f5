"""The baseline for gateway overhead: a bare Litestar app whose one handler calls the backend.

Same fake model, same batcher, same JSON shape out; no policy, cache, metrics or routing.
Run: ``python bench/_bare.py PORT``.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from litestar import Litestar, post

from prism.backends import Batching, FakeSpec, InputItem, LocalBackend, Task
from prism.backends._fake import FakeModel

backend = LocalBackend(
    FakeModel(FakeSpec(backend="local", kind="fake", dim=384)), Batching(), name="bare"
)


@post("/infer", status_code=200)
async def infer(data: dict[str, Any]) -> dict[str, Any]:
    items = [InputItem(text=i["text"]) for i in data["inputs"]]
    outs = await backend.infer(Task.EMBED, items, {})
    return {"outputs": [{"embedding": o["embedding"].tolist()} for o in outs]}


async def _start() -> None:
    await backend.start()


app = Litestar([infer], on_startup=[_start])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
