"""Render pytest-benchmark JSON as markdown: per group, each variant's median per call and speed-up.

    python benches/report.py benches/results/<file>.json [> table.md]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

BASELINES = ("reference", "compiled")


def render(path: str) -> str:
    data = json.load(open(path))
    machine = data.get("machine_info", {})
    rows = defaultdict(dict)
    meta = {}
    for b in data["benchmarks"]:
        ex = b.get("extra_info", {})
        per_call_us = b["stats"]["median"] / ex.get("inner", 1) * 1e6
        # deployment benches name their variant "path"; op and model benches name it "backend"
        rows[b["group"]][ex.get("path") or ex.get("backend", b["name"])] = (per_call_us, ex)
        meta = ex
    lines = [
        f"# {path}",
        "",
        f"device: {meta.get('device', '?')}; torch {meta.get('torch', '?')}; triton {meta.get('triton', '?')}; "
        f"commit {meta.get('git_sha', '?')}; date {data.get('datetime', '?')}; host {machine.get('node', '?')}",
        "",
        "| group | variant | median µs/call | vs eager | vs torch.compile | % HBM floor | CUDA graph µs/call |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group in sorted(rows):
        cells = rows[group]
        ref = cells.get("reference", cells.get("eager", (None,)))[0]  # eager reference, or eager model
        comp = cells.get("compiled", (None,))[0]
        for backend, (us, ex) in sorted(cells.items(), key=lambda kv: kv[1][0]):
            vs_ref = f"{ref / us:.1f}×" if ref else "–"
            vs_comp = f"{comp / us:.1f}×" if comp else "–"
            floor = f"{ex['pct_hbm_floor']:.0f}%" if "pct_hbm_floor" in ex else "–"
            replay = f"{ex['graph_us_per_call']:,.1f}" if "graph_us_per_call" in ex else ("fails" if "graph_error" in ex
                                                                                         else "–")
            lines.append(f"| {group} | {backend} | {us:,.1f} | {vs_ref} | {vs_comp} | {floor} | {replay} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.stdout.write(render(sys.argv[1]))
