"""Run the ``prism`` command line and write down which modules it has loaded, from inside it.

    python -m tests.modules_probe OUT_PREFIX PORT serve --policy P --port PORT ...

The command runs exactly as ``python -m prism.gateway.cli`` would (``runpy``, same argv, same
``sys.path``). A daemon thread polls ``http://127.0.0.1:PORT/readyz`` and, on the first 200,
writes ``sorted(sys.modules)`` to ``OUT_PREFIX-ready.json``; when the process exits (SIGTERM
ends ``prism serve`` cleanly; uvicorn re-raises it once it has shut down) the same list goes to ``OUT_PREFIX-exit.json``, so a test sees
both what start-up loaded and whatever serving requests loaded later.
"""

from __future__ import annotations

import atexit
import json
import runpy
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def _write(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(sys.modules)))
    tmp.replace(path)  # the test never reads half a file


def _watch_ready(port: int, out: Path) -> None:
    url = f"http://127.0.0.1:{port}/readyz"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    _write(out)
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    prefix, port, *argv = sys.argv[1:]
    atexit.register(_write, Path(f"{prefix}-exit.json"))
    # uvicorn handles SIGTERM, shuts down, then re-raises it to the handler it found: this one,
    # so the process ends through SystemExit (and atexit) rather than the default handler
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ready = Path(f"{prefix}-ready.json")
    threading.Thread(target=_watch_ready, args=(int(port), ready), daemon=True).start()
    sys.argv = ["prism", *argv]
    runpy.run_module("prism.gateway.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
