"""The bench's summary: one table, bgjobs beside its peer and its target; the raw JSON on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str, str]


def save(report: dict[str, Any], folder: str) -> Path:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def _get(report: dict[str, Any], *keys: str) -> Any:
    value: Any = report
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:g}{unit}"
    return f"{round(value):,}{unit}"


def _ratio(ours: Any, theirs: Any, lower_is_better: bool = False) -> str:
    if not ours or not theirs:
        return "-"
    return f"{(theirs / ours if lower_is_better else ours / theirs):.2f}x"


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    e, d = _get(r, "peers", "enqueue") or {}, _get(r, "peers", "drain") or {}
    if e:
        out.append(("single enqueue, jobs/s", _fmt(e["bgjobs_single_per_s"]),
                    _fmt(e["pgqueuer_single_per_s"]),
                    _ratio(e["bgjobs_single_per_s"], e["pgqueuer_single_per_s"]), ">= 1.0x"))
        out.append(("enqueue_many 10,000, jobs/s", _fmt(e["bgjobs_batch_per_s"]),
                    _fmt(e["pgqueuer_batch_per_s"]),
                    _ratio(e["bgjobs_batch_per_s"], e["pgqueuer_batch_per_s"]), ">= 50,000/s"))
    for w in (1, 2, 4):
        ours, theirs = d.get(f"bgjobs_drain_w{w}_per_s"), d.get(f"pgqueuer_drain_w{w}_per_s")
        if ours:
            out.append((f"no-op drain W={w}, jobs/s", _fmt(ours), _fmt(theirs),
                        _ratio(ours, theirs), ">= 1.5x" if w == 2 else ""))
    for key in ("p50", "p99"):
        ours, theirs = _get(d, "bgjobs_pickup_ms", key), _get(d, "pgqueuer_pickup_ms", key)
        if ours is not None:
            out.append((f"pickup latency {key}, ms", _fmt(ours), _fmt(theirs),
                        _ratio(ours, theirs, lower_is_better=True), ""))
    for size, target in (("c1000", "p50 <= 10, p99 <= 50"), ("c5000", "p99 <= 250"),
                         ("c200", "")):
        ev = _get(r, "events", size)
        if ev:
            out.append((f"SSE {ev['clients']} clients, commit->client p50/p99 ms",
                        f"{_fmt(ev['delay_p50_ms'])} / {_fmt(ev['delay_p99_ms'])}", "", "",
                        target))
            out.append((f"SSE {ev['clients']} clients, RSS MB / LISTEN conns / got final",
                        f"{_fmt(ev['rss_mb'])} / {ev['listen_connections']} / "
                        f"{ev['clients_with_final_state']}", "", "",
                        "<= 300 MB, 1" if size == "c5000" else ""))
            if ev.get("ratio_to_floor") is not None:
                out.append((f"SSE {ev['clients']} clients, CPU us per stream-event / floor",
                            f"{_fmt(ev['cpu_us_per_stream_event'])} / "
                            f"{_fmt(ev['floor_cpu_us_per_socket'])}", "",
                            f"{ev['ratio_to_floor']:.2f}x", "<= 2x the floor"))
    s = r.get("supervisors") or {}
    for n in (1, 2, 4, 8):
        row = s.get(f"n{n}")
        if row:
            out.append((f"{n} supervisor(s): drain jobs/s; client tx per idle job (all tx)",
                        f"{_fmt(row['drain_jobs_per_s'])}; "
                        f"{_fmt(row['client_transactions_per_idle_job'])} "
                        f"({_fmt(row['transactions_per_idle_job'])})", "", "",
                        "8: >= 0.8x of 1; <= +2 tx" if n == 8 else ""))
    p = r.get("progress") or {}
    for key in ("k100", "k1000", "k5000", "k1000_s4"):
        row = p.get(key)
        if row:
            out.append((f"progress K={row['k']} S={row['supervisors']}: pgbench kept; commits/s",
                        f"{row['pgbench_kept']:.0%}; {_fmt(row['progress_commits_per_s'])}",
                        "", "", ">= 80% at K=1000" if key == "k1000" else ""))
    ev = _get(p, "k1000_with_1000_streams", "events")
    if ev:
        out.append(("  meanwhile SSE 1000 clients p50/p99 ms",
                    f"{_fmt(ev['delay_p50_ms'])} / {_fmt(ev['delay_p99_ms'])}", "", "",
                    "p99 <= 100"))
    a = r.get("api_heavy") or {}
    for key, what, target in (("nice10", "CPU-bound jobs, nice 10", "p99 <= 5, 0 errors"),
                              ("nice0", "CPU-bound jobs, nice 0", "(lever off)"),
                              ("no_jobs", "no jobs at all", "(the floor)")):
        row = a.get(key)
        if row:
            out.append((f"progress checks, {what}: p50/p99 ms, errors",
                        f"{_fmt(row['p50_ms'])} / {_fmt(row['p99_ms'])}, {row['errors']}", "",
                        "", target))
    pool = r.get("poolers") or {}
    for measure, what in (("enqueue", "enqueue"), ("drain_batch_64", "drain, batches of 64"),
                          ("drain_one_by_one", "drain, one by one")):
        direct = pool.get(f"{measure}_direct_jobs_per_s")
        if direct:
            out.append((f"{what} jobs/s: direct / unprepared / via PgBouncer (txn)",
                        f"{_fmt(direct)} / {_fmt(pool[f'{measure}_direct_unprepared_jobs_per_s'])}"
                        f" / {_fmt(pool[f'{measure}_pgbouncer_jobs_per_s'])}", "", "",
                        f"pooler {pool[f'{measure}_pgbouncer_vs_direct']}x of direct"))
    w = r.get("workflows") or {}
    if w:
        out.append((f"fan-in of {w['fan']:,}: last completion -> child start, ms",
                    _fmt(w["fan_in_release_to_start_ms"]["median"]),
                    f"{_fmt(w['independent_wakeup_ms']['median'])} (own idle wake-up)", "",
                    "<= 10"))
        out.append((f"fan-out of {w['fan']:,}: insert; completing the parent (no children), ms",
                    f"{_fmt(w['fan_out_insert_ms']['median'])}; "
                    f"{_fmt(w['fan_out_parent_completion_ms']['median'])} "
                    f"({_fmt(w['no_children_completion_ms']['median'])})", "", "", ""))
        out.append(("drain, pairs (one dependency each) vs independent, jobs/s",
                    f"{_fmt(w['paired_jobs_per_s'])} vs {_fmt(w['independent_jobs_per_s'])}",
                    "", f"{w['paired_over_independent']:.2f}x", ">= 0.8x"))
    io = r.get("io") or {}
    for variant in ("sleep", "http"):
        row = io.get(variant)
        if row:
            out.append((f"{io['jobs']:,} IO jobs ({variant} 100 ms), s; procrastinate "
                        f"{_fmt(row.get('procrastinate_s'))} s",
                        _fmt(row["bgjobs_s"]), _fmt(row["pgqueuer_s"]),
                        _ratio(row["pgqueuer_s"], row["bgjobs_s"]), ">= 1.0x the best peer"))
    m = r.get("migrate_stall") or {}
    for key, what in (("lock_timeout_3s", "lock_timeout 3 s"), ("no_lock_timeout", "no timeout")):
        row = m.get(key)
        if row:
            out.append((f"enqueue behind a waiting migration ({what}): max s, enqueues",
                        f"{_fmt(row['max_enqueue_s'])}, {_fmt(row['enqueues_during'])}", "", "",
                        "max <= 3.5 s" if key == "lock_timeout_3s" else "(before)"))
    return out


def table(report: dict[str, Any]) -> str:
    head: Row = ("figure (medians)", "bgjobs", "pgqueuer", "ratio", "target")
    body = rows(report)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(5)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in [head, *body]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
