"""``report.json``, ``report.md`` and ``report.png`` of one ``prism optimize`` run.

The plot puts every variant measured beside this one (sibling folders holding a
``report.json`` of the same source) on one chart: agreement with the source across, speed-up at
batch 32 up, the source itself at (1, 1x), so the trade-off of each variant reads at a glance.
Drawn with Pillow: no plotting library for one scatter chart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def write_json(out_dir: Path, report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2) + "\n"
    (out_dir / REPORT_JSON).write_text(text, encoding="utf-8")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def markdown(report: dict[str, Any], snippet: str = "") -> str:
    """The report as a short Markdown page: verdict, table, agreement, how to serve it."""
    speed = report["items_per_s"]
    size = report["size_bytes"]
    verdict = "accepted" if report["accepted"] else "REFUSED (below the agreement floor)"
    if report["accepted"] and report.get("forced"):
        verdict = "accepted with --force, below the agreement floor"
    unit = "images" if "zero_shot" in report else "items"
    lines = [
        f"# {report['source']} as `{report['variant']}`: {verdict}",
        "",
        f"Measured {report['measured_at']} on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores, load average {report['machine']['load_avg']}), "
        f"{report['sample']['items']} {report['sample']['kind']} inputs. The machine may be "
        "shared: absolute rates wander, the speed-ups are measured side by side "
        f"({report['rounds']} alternating rounds, back to back; each rate is its median "
        "round, each ratio the median of the rounds' own ratios).",
        "",
        "| | source | variant | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| {unit}/s, batch 1 | {speed['source']['batch1']:.1f} | {speed['variant']['batch1']:.1f} "
        f"| {report['speedup_batch1']:.2f}x |",
        f"| {unit}/s, batch 32 | {speed['source']['batch32']:.1f} "
        f"| {speed['variant']['batch32']:.1f} | {report['speedup_batch32']:.2f}x |",
    ]
    if "text_batch32" in speed["source"]:  # CLIP: the rows above are images, this one texts
        lines += [
            f"| texts/s, batch 32 | {speed['source']['text_batch32']:.1f} "
            f"| {speed['variant']['text_batch32']:.1f} | {report['speedup_text_batch32']:.2f}x |"
        ]
    lines += [
        f"| size on disk | {_mb(size['source'])} | {_mb(size['variant'])} "
        f"| {size['variant'] / max(size['source'], 1):.2f} |",
        "",
        f"Agreement with the source{' (images)' if 'zero_shot' in report else ''}: cosine mean "
        f"**{report['cosine_mean']:.4f}**, "
        f"min {report['cosine_min']:.4f}; Spearman of pairwise similarities "
        f"**{report['spearman']:.4f}** (floor: cosine mean >= {report['floor']['cosine_mean']}).",
    ]
    if "zero_shot" in report:
        text, zs = report["text_agreement"], report["zero_shot"]
        lines += [
            f"Texts ({report['sample']['texts']} captions): cosine mean "
            f"**{text['cosine_mean']:.4f}**, min {text['cosine_min']:.4f}; Spearman "
            f"**{text['spearman']:.4f}** (the floor applies to both towers).",
            "",
            f"Zero-shot accuracy on {zs['images']} labelled images ({zs['classes']} classes): "
            f"source **{zs['source']:.1%}**, variant **{zs['variant']:.1%}** "
            f"(change **{100 * zs['change']:+.1f} points**); the variant's top class is the "
            f"source's for {zs['top1_agreement']:.1%} of the images. Sample: {zs['sample']}.",
        ]
    if report.get("notes"):
        lines += ["", *[f"- {note}" for note in report["notes"]]]
    lines += [
        "",
        "## Serve it",
        "",
        "`version_spec` (paste under the model's `versions:`):",
        "",
        "```yaml",
        json.dumps(report["version_spec"]),
        "```",
    ]
    if snippet:
        lines += [
            "",
            "A policy that runs it beside the source:",
            "",
            "```yaml",
            snippet.rstrip(),
            "```",
        ]
    lines += ["", "![speed against agreement](report.png)", ""]
    return "\n".join(lines)


def _reports_beside(out_dir: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    """This report and those of other variants of the same source in sibling folders."""
    found = [report]
    for path in sorted(out_dir.resolve().parent.glob(f"*/{REPORT_JSON}")):
        if path.parent == out_dir.resolve():
            continue
        try:
            other = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if other.get("source") == report["source"] and "speedup_batch32" in other:
            found.append(other)
    return found


def plot(out_dir: Path, report: dict[str, Any], width: int = 640, height: int = 420) -> Path:
    """Speed-up at batch 32 against cosine agreement, one labelled point per variant."""
    points = [("source", 1.0, 1.0, (90, 90, 90), "")] + [
        (
            r["variant"],
            float(r["cosine_mean"]),
            float(r["speedup_batch32"]),
            (30, 110, 200) if r["accepted"] else (200, 50, 50),
            # CLIP: each point carries its zero-shot accuracy change
            f", {100 * r['zero_shot']['change']:+.1f} pts" if "zero_shot" in r else "",
        )
        for r in _reports_beside(out_dir, report)
    ]
    left, right, top, bottom = 70, width - 30, 40, height - 60
    x_lo = min(0.98, min(p[1] for p in points) - 0.002)
    y_hi = max(2.0, max(p[2] for p in points) * 1.15)

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_lo) / (1.0005 - x_lo) * (right - left),
            bottom - y / y_hi * (bottom - top),
        )

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), f"{report['source']}: speed-up vs agreement (batch 32)", fill="black")
    if "zero_shot" in report:
        zs = report["zero_shot"]
        line = (
            f"{report['variant']}: zero-shot accuracy {zs['source']:.1%} -> {zs['variant']:.1%} "
            f"({100 * zs['change']:+.1f} pts)"
        )
        draw.text((left, 24), line, fill="black")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    for k in range(5):  # grid and tick labels
        y = y_hi * k / 4
        _, py = xy(x_lo, y)
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        draw.text((left - 45, py - 6), f"{y:.1f}x", fill="black")
        x = x_lo + (1.0 - x_lo) * k / 4
        px, _ = xy(x, 0)
        draw.text((px - 16, bottom + 6), f"{x:.3f}", fill="black")
    floor_x, _ = xy(float(report["floor"]["cosine_mean"]), 0)
    if floor_x >= left:
        draw.line([(floor_x, top), (floor_x, bottom)], fill=(200, 50, 50), width=1)
        draw.text((floor_x + 3, top), "floor", fill=(200, 50, 50))
    draw.text((left + (right - left) // 2 - 80, bottom + 24), "cosine mean vs source", fill="black")
    for name, x, y, color, extra in points:
        px, py = xy(x, y)
        draw.ellipse((px - 5, py - 5, px + 5, py + 5), fill=color)
        label = f"{name} ({y:.2f}x{extra})"
        # labels near the right edge go to the left of their point
        lx = px + 8 if px + 8 + draw.textlength(label) < width else px - 8 - draw.textlength(label)
        draw.text((lx, py - 6), label, fill=color)
    path = out_dir / REPORT_PNG
    image.save(path)
    return path
