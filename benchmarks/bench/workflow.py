"""Section ``workflow``: per-rule wall times of a Snakemake run (benchmark TSVs or logs)."""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections import defaultdict
from pathlib import Path

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_START = re.compile(r"^(?:local)?(?:rule|checkpoint) ([\w-]+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: ([\w-]+)\)$")
_ERROR = re.compile(r"^Error in rule ([\w-]+):$")


def log_span(text: str) -> float | None:
    """Seconds from the first to the last time stamp of a Snakemake log: the invocation's wall time."""
    stamps = [_parse_stamp(m.group(1)) for m in map(_STAMP.match, (line.strip() for line in text.splitlines())) if m]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else None


def _parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text.replace("  ", " "), "%a %b %d %H:%M:%S %Y")


def parse_snakemake_log(text: str) -> list[dict]:
    """Jobs of one Snakemake log: rule, jobid, wildcards, start, end, seconds, status.

    Snakemake stamps lines to the second, so a job's time is good to about one second. A job
    the log never finishes (the invocation was stopped) is ``unfinished``, its seconds counted
    to the log's last stamp: a lower bound of the time it ran.
    """
    jobs: dict[str, dict] = {}
    stamp, current, error_rule = None, None, None
    for line in text.splitlines():
        m = _STAMP.match(line.strip())
        if m:
            stamp = _parse_stamp(m.group(1))
            continue
        m = _START.match(line)
        if m and stamp is not None:
            current = {"rule": m.group(1), "start": stamp, "wildcards": ""}
            continue
        m = _JOBID.match(line)
        if m and current is not None:
            jobs[m.group(1)] = current
            if error_rule:
                jobs[m.group(1)]["status"] = "error"
            continue
        m = _WILDCARDS.match(line)
        if m and current is not None:
            current["wildcards"] = m.group(1)
            continue
        m = _DONE.match(line)
        if m and m.group(1) in jobs and stamp is not None:
            job = jobs[m.group(1)]
            job["end"], job["status"] = stamp, "done"
            current = None
            continue
        m = _ERROR.match(line)
        if m:
            error_rule, current = m.group(1), None
            continue
        if line.strip() == "" and error_rule:
            error_rule = None
    rows = []
    for jobid, job in jobs.items():
        end = job.get("end", stamp)
        rows.append(
            {
                "rule": job["rule"],
                "jobid": int(jobid),
                "wildcards": job["wildcards"],
                "seconds": (end - job["start"]).total_seconds() if end else None,
                "status": job.get("status", "unfinished"),
            }
        )
    return rows


def parse_benchmark_tsv(path: Path) -> dict | None:
    """One Snakemake ``benchmark:`` file (columns s, h:m:s, max_rss, ...): its mean seconds."""
    lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2 or lines[0][0] != "s":
        return None
    header, rows = lines[0], lines[1:]
    col = {name: i for i, name in enumerate(header)}
    secs = [float(r[col["s"]]) for r in rows]
    rss = [float(r[col["max_rss"]]) for r in rows if "max_rss" in col and r[col["max_rss"]] not in ("", "NA", "-")]
    return {"seconds": statistics.mean(secs), "repeats": len(secs), "max_rss_mb": max(rss) if rss else None}


def workflow_times(path: str | Path) -> dict:
    """Per-rule wall times from ``benchmark:`` TSVs under PATH, else from Snakemake logs.

    PATH may be a benchmark folder (rule = first folder under it, else the file stem), a
    run folder holding ``.snakemake/log``, a folder of logs, or one log file. ``wall_s`` sums
    the invocations' wall times: the run's wall time when it was stopped and resumed.
    """
    path = Path(path)
    jobs, source, spans = [], None, []
    tsvs = (
        [p for p in path.rglob("*") if p.is_file() and p.suffix in (".tsv", ".txt", ".benchmark")]
        if path.is_dir()
        else []
    )
    for tsv in sorted(tsvs):
        try:
            bench = parse_benchmark_tsv(tsv)
        except (OSError, ValueError, IndexError):
            bench = None
        if bench is None:
            continue
        rel = tsv.relative_to(path)
        rule = rel.parts[0] if len(rel.parts) > 1 else tsv.stem
        jobs.append(
            {
                "rule": rule,
                "job": str(rel),
                "seconds": bench["seconds"],
                "status": "done",
                "max_rss_mb": bench["max_rss_mb"],
            }
        )
        source = "benchmark files"
    if not jobs:
        if path.is_file():
            logs = [path]
        else:
            logs = sorted((path / ".snakemake" / "log").glob("*.snakemake.log")) or sorted(
                path.rglob("*.snakemake.log")
            )
        # A job finished again by a later invocation counts its last run only (a deliberate
        # rerun); a job stopped and resumed counts each of its runs since it last finished (the
        # work carried over: training and cells resume).
        latest: dict[tuple[str, str], dict] = {}
        for log in logs:  # file names are start times: chronological
            text = log.read_text(errors="replace")
            rows = parse_snakemake_log(text)
            if rows:
                spans.append({"log": log.name, "wall_s": log_span(text)})
            for r in rows:
                key = (r["rule"], r["wildcards"])
                before = latest.get(key)
                carried = before["seconds"] if before and before["status"] != "done" and before["seconds"] else 0.0
                runs = before["runs"] + 1 if before and before["status"] != "done" else 1
                latest[key] = {
                    "rule": r["rule"],
                    "job": r["wildcards"],
                    "status": r["status"],
                    "log": log.name,
                    "seconds": None if r["seconds"] is None else r["seconds"] + carried,
                    "runs": runs,
                }
        if spans:
            jobs = list(latest.values())
            source = f"snakemake logs ({len(spans)}: {', '.join(s['log'] for s in spans)})"
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for job in jobs:
        by_rule[job["rule"]].append(job)
    rules = {}
    for rule, rows in sorted(by_rule.items()):
        secs = [r["seconds"] for r in rows if r["seconds"] is not None and r["status"] == "done"]
        rules[rule] = {
            "jobs": len(rows),
            "finished": len(secs),
            "total_s": sum(secs),
            "median_s": statistics.median(secs) if secs else None,
            "max_s": max(secs) if secs else None,
        }
    return {
        "path": str(path),
        "source": source,
        "rules": rules,
        "jobs": jobs,
        "invocations": spans,
        "wall_s": sum(s["wall_s"] or 0.0 for s in spans) if spans else None,
        "note": None
        if source and source.startswith("benchmark")
        else "no benchmark: files found; times come from the Snakemake log (1 s resolution, includes queueing "
        "inside the job's shell only)",
    }
