"""``GET /metrics``: the service in Prometheus' text format, computed from the database on each scrape."""
from __future__ import annotations

from bigseg.service import states
from bigseg.service.db import Store


def metrics_text(store: Store) -> str:
    """Jobs by status and profile, queue depth, blocks done, voxels processed and job seconds."""
    lines = ["# HELP bigseg_jobs Jobs by status and profile.", "# TYPE bigseg_jobs gauge"]
    counts = {(status, profile): n for status, profile, n in store.count_by("status", "profile")}
    for (status, profile), n in sorted(counts.items()):
        lines.append(f'bigseg_jobs{{status="{status}",profile="{_label(profile)}"}} {n}')
    lines += ["# HELP bigseg_queue_depth Jobs waiting to start.", "# TYPE bigseg_queue_depth gauge",
              f"bigseg_queue_depth {sum(n for (s, _), n in counts.items() if s == states.QUEUED)}"]
    blocks = voxels = 0
    seconds: dict[str, float] = {}
    for job in store.jobs_in([states.SUCCEEDED]):
        result = job["result"] or {}
        blocks += int(result.get("blocks", 0))
        voxels += int(result.get("voxels", 0))
        method = (job["spec"].get("method") or {}).get("name", "")
        seconds[method] = seconds.get(method, 0.0) + float((result.get("seconds") or {}).get("total", 0.0))
    lines += ["# HELP bigseg_blocks_total Blocks segmented by succeeded jobs.", "# TYPE bigseg_blocks_total counter",
              f"bigseg_blocks_total {blocks}",
              "# HELP bigseg_voxels_total Voxels segmented by succeeded jobs.", "# TYPE bigseg_voxels_total counter",
              f"bigseg_voxels_total {voxels}",
              "# HELP bigseg_job_seconds_total Seconds of succeeded jobs, by method.",
              "# TYPE bigseg_job_seconds_total counter"]
    lines += [f'bigseg_job_seconds_total{{method="{_label(m)}"}} {s:.3f}' for m, s in sorted(seconds.items())]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
