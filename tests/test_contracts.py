"""Generated contracts are checked in and current; imports run one way."""

from __future__ import annotations

import json
import subprocess
import sys

from prism.gateway.openapi import OPENAPI_FILE, live_openapi, render
from tests.support import ROOT


def test_openapi_document_is_current() -> None:
    live = render(live_openapi())
    assert OPENAPI_FILE.read_text() == live, "stale: run `python -m prism.gateway.openapi`"
    paths = json.loads(live)["paths"]
    assert {"/v1/infer", "/healthz", "/readyz"} <= set(paths)


def test_imports_run_one_way() -> None:
    """gateway -> backends -> kernels: import-linter's layers contract (pyproject.toml)."""
    # `python -c` puts this checkout first on sys.path (the lint-imports script would find the
    # editable install's checkout instead, wrong in a second worktree)
    lint = "from importlinter.cli import lint_imports_command as lint; lint()"
    cmd = [sys.executable, "-c", lint]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KEPT" in res.stdout


def test_no_import_cycles() -> None:
    """No module of ours imports one that imports it back, however indirectly (imports
    under ``TYPE_CHECKING`` count: they are a cycle in the design all the same)."""
    import grimp

    graph = grimp.build_graph("prism", cache_dir=None)
    ours = sorted(m for m in graph.modules if m.startswith("prism."))
    edges = {m: [x for x in graph.find_modules_directly_imported_by(m) if x in ours] for m in ours}
    cycles = []
    for module in ours:
        for imported in edges[module]:
            if graph.chain_exists(importer=imported, imported=module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                cycles.append(" -> ".join([module, *(chain or ())]))
    assert cycles == []
