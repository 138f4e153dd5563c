"""Turn pytest-benchmark JSON into a markdown table (and a PNG bar chart when matplotlib is there).

    python3 -m pytest --benchmark-only --benchmark-json=bench.json
    python3 bench/report.py bench.json [more.json ...] --md bench.md --png bench.png
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict


def rows(paths: list[str]) -> tuple[list[dict], dict]:
    out, meta = [], {}
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        meta = {"datetime": d.get("datetime", "?"), "machine": d.get("machine_info", {})}
        for b in d["benchmarks"]:
            e = b["extra_info"]
            out.append({"group": b.get("group") or b["name"], "path": e.get("path", b["name"]), "threads": e.get("threads", ""),
                        "items_per_s": e.get("items_per_s", 0.0), "cpu_ms_per_item": e.get("cpu_ms_per_item", 0.0),
                        "frames_per_s": e.get("frames_per_s"), "mean_ms": 1000 * b["stats"]["mean"],
                    "spread": e.get("round_ms_min_median_max")})
    return out, meta


def markdown(data: list[dict], meta: dict, device: str) -> str:
    lines = [f"Device: {device}; run {meta.get('datetime', '?')}; "
             f"python {meta.get('machine', {}).get('python_version', '?')}", ""]
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in data:
        groups[r["group"]].append(r)
    for g, rs in groups.items():
        # Where the plain PyNvVideoCodec loop ran in the same group, every path is also shown as a share
        # of it: a reference loop (one decoder per thread, no pool), not a limit (mmprep can beat it).
        raw = next((r["frames_per_s"] for r in rs if r["path"] == "nvdec-reference-loop" and r["frames_per_s"]), None)
        head = "| path | items/s | CPU ms / item | wall ms / round (min/median/max) | frames/s |" + (" % of reference loop |" if raw else "")
        lines += [f"**{g}**", "", head, "|---|---:|---:|---:|---:|" + ("---:|" if raw else "")]
        for r in sorted(rs, key=lambda r: -r["items_per_s"]):
            fps = f"{r['frames_per_s']:.0f}" if r["frames_per_s"] else ""
            share = f" {100 * r['frames_per_s'] / raw:.0f}% |" if raw and r["frames_per_s"] else (" |" if raw else "")
            spread = "/".join(f"{x:.1f}" for x in r.get("spread") or []) or f"{r['mean_ms']:.1f}"
            lines.append(f"| {r['path']} | {r['items_per_s']:.1f} | {r['cpu_ms_per_item']:.2f} | {spread} | {fps} |{share}")
        lines.append("")
    return "\n".join(lines)


def chart(data: list[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in data:
        groups[r["group"]].append(r)
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 2.2 * len(groups) + 0.5), squeeze=False)
    for ax, (g, rs) in zip(axes[:, 0], groups.items()):
        rs = sorted(rs, key=lambda r: r["items_per_s"])
        vals = [r["items_per_s"] for r in rs]
        ax.barh([r["path"] for r in rs], vals, color="#4c72b0")
        ax.set_xscale("log")
        # Bars start a decade below the smallest value, so their lengths do not exaggerate gaps.
        lo = 10 ** math.floor(math.log10(max(min(vals), 1e-9)) - 1)
        ax.set_xlim(lo, max(vals) * 3)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3g}/s", va="center", fontsize=7)
        ax.set_title(g, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--md", default="bench.md")
    ap.add_argument("--png", default=None)
    ap.add_argument("--device", default="see machine_info")
    a = ap.parse_args()
    data, meta = rows(a.json)
    with open(a.md, "w") as f:
        f.write(markdown(data, meta, a.device))
    if a.png:
        try:
            chart(data, a.png)
        except ImportError:
            print("matplotlib not installed: no PNG")
    print(open(a.md).read())


if __name__ == "__main__":
    main()
