"""Turns bench/run's result lines into the markdown table, with ratios and the goals.

    report.py RESULTS.jsonl [--header FILE]   → markdown on stdout

Each line of RESULTS.jsonl is one measurement of one system in one part:

    {"part": "ingest-single", "system": "baseline", "rps": 4150.2, "p50_ms": 12.9, ...}

part: ingest-single | ingest-batch | sink-drain | e2e;  system: ceiling | baseline | ess.
Known figures (all optional): rps, p50_ms, p95_ms, p99_ms, errors (HTTP: socket errors and
answers of 400 or more; sink: rows missing or extra), events_per_s,
rows_per_s, e2e_p50_ms, e2e_p99_ms, cpu_s_per_million, peak_rss_mb, loadavg, note.
A later line for the same part and system replaces an earlier one. Lines that are not JSON
objects are ignored. Runners outside bench/run (bench/ingest/run.sh, bench/sink/run.sh) add
lines in the same form.
"""

from __future__ import annotations

import argparse
import json
import sys

SYSTEMS = ("ceiling", "baseline", "ess")
PARTS = {
    "ingest-single": "Ingest, one event per POST",
    "ingest-batch": "Ingest, batch POSTs",
    "sink-drain": "Sink, drain of a pre-filled topic",
    "e2e": "End to end, sustained",
}
# (key, label, better): better is "high", "low" or None (no ratio).
FIGURES = (
    ("share_of_max", "paced at (share of its maximum)", None),
    ("rps", "requests/s", "high"),
    ("p50_ms", "latency p50 (ms)", "low"),
    ("p95_ms", "latency p95 (ms)", "low"),
    ("p99_ms", "latency p99 (ms)", "low"),
    ("errors", "errors", None),
    ("events_per_s", "events/s into Kafka", "high"),
    ("rows_per_s", "rows/s into ClickHouse", "high"),
    ("e2e_p50_ms", "e2e p50 (ms)", "low"),
    ("e2e_p99_ms", "e2e p99 (ms)", "low"),
    ("cpu_s_per_million", "CPU s per million events", "low"),
    ("peak_rss_mb", "peak RSS (MB)", "low"),
    ("loadavg", "load average (1 min) at start", None),
)


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (isinstance(value, float) and value >= 1000):
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(a, b, better: str | None) -> str:
    """How many times better a is than b (× above 1 means a is better)."""
    if better is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "–"
    if a <= 0 or b <= 0:
        return "–"
    r = a / b if better == "high" else b / a
    return f"{r:.2f}×"


def load(path: str) -> dict:
    results: dict = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "part" in row and "system" in row:
                results.setdefault(row["part"], {})[row["system"]] = row
    return results


def goals(results: dict) -> list[str]:
    lines = []

    def get(part, system, key):
        return results.get(part, {}).get(system, {}).get(key)

    ess_rps = get("ingest-single", "ess", "rps")
    base_rps = get("ingest-single", "baseline", "rps")
    ceil_rps = get("ingest-single", "ceiling", "rps")
    if ess_rps and base_rps:
        r = ess_rps / base_rps
        state = "met" if r >= 10 else f"missed by {10 - r:.1f}× ({10 * base_rps - ess_rps:,.0f} requests/s short)"
        lines.append(f"- ingest ≥ 10× the baseline's requests/s: {r:.1f}× — {state}")
    else:
        lines.append("- ingest ≥ 10× the baseline's requests/s: not measured (ess or baseline missing)")
    if ess_rps and ceil_rps:
        r = ess_rps / ceil_rps
        state = "met" if r >= 0.5 else f"missed by {0.5 - r:.2f} of the ceiling"
        stretch = "met" if r >= 0.7 else f"missed by {0.7 - r:.2f}"
        lines.append(f"- ingest ≥ 0.5× the ceiling: {r:.2f}× — {state}; stretch 0.7×: {stretch}")
    else:
        lines.append("- ingest ≥ 0.5× the ceiling: not measured (ess or ceiling missing)")
    rows = get("sink-drain", "ess", "rows_per_s")
    if rows:
        state = "met" if rows >= 200_000 else f"missed by {200_000 - rows:,.0f} rows/s ({rows / 200_000:.2f} of it)"
        lines.append(f"- sink ≥ 200,000 rows/s: {rows:,.0f} — {state}")
    else:
        lines.append("- sink ≥ 200,000 rows/s: not measured (ess sink drain missing)")
    p99 = get("e2e", "ess", "e2e_p99_ms")
    share = get("e2e", "ess", "share_of_max")
    if p99:
        state = "met" if p99 <= 3000 else f"missed by {p99 - 3000:,.0f} ms"
        try:
            paced = float(str(share).rstrip("%")) / 100
        except ValueError:
            paced = None
        if paced is not None and paced < 0.75:
            state += f", but paced at {share} of the maximum, not 80%: not yet a check of the goal"
        lines.append(f"- e2e p99 ≤ 3 s at 80% of max: {p99:,.0f} ms — {state}")
    else:
        lines.append("- e2e p99 ≤ 3 s at 80% of max: not measured (e2e run missing)")
    return lines


def render(results: dict) -> str:
    out = [
        "Ratios say how many times better ess is: a higher rate, or a lower latency, CPU cost or "
        "memory (below 1× means worse).\n"
    ]
    for part, title in PARTS.items():
        rows = results.get(part)
        if not rows:
            continue
        out.append(f"### {title}\n")
        out.append("| figure | ceiling | baseline | ess | ess ÷ baseline | ess ÷ ceiling |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for key, label, better in FIGURES:
            values = [rows.get(s, {}).get(key) for s in SYSTEMS]
            if all(v is None for v in values):
                continue
            c, b, e = values
            if part == "e2e" and key in ("rps", "events_per_s", "rows_per_s"):
                better = None  # set by the pacing, not a result
            out.append(
                f"| {label} | {fmt(c)} | {fmt(b)} | {fmt(e)} | {ratio(e, b, better)} | {ratio(e, c, better)} |"
            )
        notes = [f"{s}: {rows[s]['note']}" for s in SYSTEMS if rows.get(s, {}).get("note")]
        if notes:
            out.append("")
            out.extend(f"- {n}" for n in notes)
        out.append("")
    out.append("### Goals\n")
    out.extend(goals(results))
    out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--header", help="markdown to print before the table")
    args = parser.parse_args()
    if args.header:
        with open(args.header) as f:
            sys.stdout.write(f.read().rstrip() + "\n\n")
    sys.stdout.write(render(load(args.results)))


if __name__ == "__main__":
    main()
