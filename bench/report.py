"""The report: the table of medians, the markdown and JSON in bench/results/, the summary."""

import json
import time
from dataclasses import asdict
from pathlib import Path

from bench import RESULTS_DIR
from bench.measurements import SizeRun
from bench.scenarios import SCENARIOS

_LABELS = {scenario.name: scenario.label for scenario in SCENARIOS}


def table_rows(runs: list[SizeRun]) -> list[list[str]]:
    rows = []
    for run in runs:
        for m in run.measurements:
            rates = [sample.requests_per_sec for sample in m.samples]
            rows.append(
                [
                    run.name,
                    m.variant or "bare",
                    _LABELS[m.scenario],
                    str(m.connections),
                    f"{m.requests_per_sec:,.0f}",
                    f"{min(rates):,.0f}–{max(rates):,.0f}",
                    f"{m.p50_ms:.2f}",
                    f"{m.p99_ms:.2f}",
                    _ms_text(m.app_ms("app_p50_ms")),
                    _ms_text(m.app_ms("app_p99_ms")),
                    f"{m.cpu_us_per_request:,.0f}",
                    "—" if m.scenario == "bare" else f"{m.ratio_to_bare:.2f}×",
                ]
            )
    return rows


def _ms_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


HEADER = [
    "size",
    "server",
    "scenario",
    "conns",
    "req/s",
    "req/s range",
    "p50 ms",
    "p99 ms",
    "in app p50 ms",
    "in app p99 ms",
    "CPU µs/req",
    "× bare",
]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    right = set(range(3, len(HEADER)))

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, rows)])


def markdown(report: dict, runs: list[SizeRun], checks: list[dict]) -> str:
    machine = report["machine"]
    sizes = ", ".join(
        f"{run.name} = {run.users:,} users / {run.usage_rows:,} usage rows"
        f" (requests spread over {run.picked_users:,} users)"
        for run in runs
    )
    lines = [
        f"Machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory_gb']} GiB;"
        f" Python {machine['python']}, SQLite {machine['sqlite']}, Falcon {machine['falcon']},"
        f" waitress {machine['waitress']}, {machine['wrk']}; server and wrk on the same machine."
        f" Code: {report['code']['commit']}"
        + (
            f" with uncommitted changes in {', '.join(report['code']['uncommitted'])}."
            if report["code"]["uncommitted"]
            else "."
        ),
        "",
        f"Medians of {report['repeat']} interleaved runs of {report['duration_s']} s, each after a"
        f" {report['warmup_s']} s warm-up (req/s range: slowest–fastest run); waitress"
        f" threads={report['threads']}; SQLITE_SYNCHRONOUS=FULL (default); server ="
        " database ×workers (`billing serve --workers N`); 32 connections ="
        " `wrk -t2 -c32`, 1 connection = `wrk -t1 -c1`. Databases: " + sizes + "."
        f" Other processes used at most {report['foreign_cpu_max']:.0%} of the CPUs during a"
        " measured run.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(HEADER) - 3)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(runs)]
    lines += ["", "| size, server | target | measured | |", "|---|---|---:|---|"]
    lines += [
        f"| {c['size']} | {c['target']} | {c['measured']} | {'PASS' if c['pass'] else 'MISS'} |"
        for c in checks
    ]
    return "\n".join(lines) + "\n"


def build_report(
    machine: dict,
    code: dict,
    runs: list[SizeRun],
    checks: list[dict],
    *,
    duration: int,
    warmup: int,
    repeat: int,
    threads: int,
    variants: list[str],
) -> dict:
    """Everything the run measured and how, as written to the JSON file."""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "code": code,
        "duration_s": duration,
        "warmup_s": warmup,
        "repeat": repeat,
        "foreign_cpu_max": max(
            sample.foreign_cpu for run in runs for m in run.measurements for sample in m.samples
        ),
        "threads": threads,
        "variants": variants,
        "sizes": [
            {key: value for key, value in asdict(run).items() if key != "measurements"}
            for run in runs
        ],
        "measurements": [m.summary() for run in runs for m in run.measurements],
        "targets": checks,
    }


def write_results(stamp: str, report: dict, text: str) -> tuple[Path, Path]:
    """The JSON report and the markdown, time-stamped and as ``latest.*``; returns the former."""
    for suffix, content in (("json", json.dumps(report, indent=2) + "\n"), ("md", text)):
        (RESULTS_DIR / f"bench-{stamp}.{suffix}").write_text(content, "utf-8")
        (RESULTS_DIR / f"latest.{suffix}").write_text(content, "utf-8")
    return RESULTS_DIR / f"bench-{stamp}.json", RESULTS_DIR / f"bench-{stamp}.md"


def print_summary(runs: list[SizeRun], checks: list[dict], written: tuple[Path, Path]) -> None:
    print("\n" + text_table(table_rows(runs)) + "\n")
    for check in checks:
        print(
            f"{'PASS' if check['pass'] else 'MISS'}  [{check['size']}] {check['target']}:"
            f" {check['measured']}"
        )
    json_path, markdown_path = written
    print(f"\nwritten: {json_path}, {markdown_path} (and latest.*)")
