"""The variants ``prism optimize`` built, side by side: a table and CSV rows.

Run ``prism optimize text-embed@1 --variant V --out build/opt/minilm-V`` for each variant
first (each run measures its variant against the source in alternating rounds), then::

    .venv/bin/python -m bench.optimize build/opt

prints one row per variant and appends them to ``bench/results/optimize.csv``. The rates are
those of each run; only the ratios were measured side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench._common import append_csv, print_table

HEADERS = [
    "source",
    "variant",
    "accepted",
    "src_b1_per_s",
    "var_b1_per_s",
    "speedup_b1",
    "src_b32_per_s",
    "var_b32_per_s",
    "speedup_b32",
    "cosine_mean",
    "cosine_min",
    "spearman",
    "size_mb",
    "load_avg",
]


def rows(folder: Path) -> list[list[object]]:
    found = []
    for path in sorted(folder.glob("*/report.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        speed = r["items_per_s"]
        found.append(
            [
                r["source"],
                r["variant"],
                r["accepted"],
                speed["source"]["batch1"],
                speed["variant"]["batch1"],
                r["speedup_batch1"],
                speed["source"]["batch32"],
                speed["variant"]["batch32"],
                r["speedup_batch32"],
                r["cosine_mean"],
                r["cosine_min"],
                r["spearman"],
                round(r["size_bytes"]["variant"] / 1e6, 1),
                r["machine"]["load_avg"],
            ]
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder holding one sub-folder per variant")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    args = parser.parse_args()
    table = rows(args.folder)
    if not table:
        raise SystemExit(f"no */report.json under {args.folder}")
    print_table(HEADERS, table)
    if not args.no_csv:
        print(append_csv("optimize.csv", HEADERS, table))


if __name__ == "__main__":
    main()
