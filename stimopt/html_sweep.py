"""``sweep.html``: one page per sweep directory, so "which optimizer wins" is seen at a glance.

One sortable row per job (its overrides, best response, evaluations to reach it), the best-so-far
curves of all jobs in one plot (``sweep.png``, stimopt.sweep) and each job's best stimulus side by
side (the PNG its own ``report.html`` saved in ``JOB/report_files/``). Written when a sweep ends
and by ``stimopt-report SWEEP_DIR``; self-contained like the run pages (relative links only).
"""
from __future__ import annotations

from pathlib import Path

from stimopt import html_report, run_reader
from stimopt.html_templates import environment

PAGE = "sweep.html"

BODY = r"""{% extends "base.html" %}{% import "macros.html" as m %}
{% block title %}stimopt sweep {{ name }}{% endblock %}
{% block body %}
<h1>stimopt sweep <code>{{ name }}</code></h1>
<p class="sub">{{ rows | length }} jobs; common overrides: <code>{{ common | join(" ") or "(none)" }}</code>.
Click a column header to sort.</p>

<h2>Jobs</h2>
<table class="sortable" id="jobs">
<thead><tr><th>job</th><th>overrides</th><th>best response</th><th>evaluations to best</th><th>evaluations</th>
<th>wall time (s)</th><th>status</th></tr></thead>
<tbody>{% for r in rows %}<tr data-job="{{ r.job }}">
<td data-sort="{{ r.job_num }}">{% if r.page %}<a href="{{ r.page }}">{{ r.job }}</a>{% else %}{{ r.job }}{% endif %}</td>
<td>{{ r.overrides }}</td>
<td class="num" data-key="best_response" data-sort="{{ r.best_response if r.best_response is not none else '' }}">{{ r.best_response | num if r.best_response is not none else "" }}</td>
<td class="num" data-key="evaluations_to_best" data-sort="{{ r.evaluations_to_best if r.evaluations_to_best is not none else '' }}">{{ r.evaluations_to_best if r.evaluations_to_best is not none else "" }}</td>
<td class="num" data-key="n_evaluations" data-sort="{{ r.n_evaluations if r.n_evaluations is not none else '' }}">{{ r.n_evaluations if r.n_evaluations is not none else "" }}</td>
<td class="num" data-sort="{{ r.wall_s if r.wall_s is not none else '' }}">{{ r.wall_s | num if r.wall_s is not none else "" }}</td>
<td>{{ r.status }}</td></tr>
{% endfor %}</tbody></table>

<h2>Best so far, all jobs</h2>
{% if plot %}<img id="curves" src="{{ plot }}" alt="best-so-far curves of all jobs">{% else %}<p class="muted">no job has evaluations yet</p>{% endif %}

<h2>Each job's best stimulus</h2>
<div class="grid" id="best-images">{% for r in rows %}<figure data-job="{{ r.job }}">
{% if r.image %}<img src="{{ r.image }}" alt="best stimulus of job {{ r.job }}">{% else %}<div class="muted" style="width:128px;height:128px">no image</div>{% endif %}
<figcaption><b>{{ r.overrides or r.job }}</b><br>{{ r.best_response | num if r.best_response is not none else "no response" }}</figcaption></figure>
{% endfor %}</div>

<script>
(function () {
  function key(row, col) {
    var c = row.cells[col], v = c.hasAttribute("data-sort") ? c.getAttribute("data-sort") : c.textContent.trim();
    var n = parseFloat(v);
    return v === "" ? null : (isNaN(n) ? v.toLowerCase() : n);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending", body = table.tBodies[0];
        table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, col), y = key(b, col);
          if (x === null || y === null) { return (x === null) - (y === null); }  // empty cells last
          if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
</script>
{% endblock %}
"""

_env = environment(**{"sweep.html": BODY})


def job_dirs(sweep_dir: Path) -> list[Path]:
    return [p for p in Path(sweep_dir).iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").exists()]


def is_sweep_dir(path: Path) -> bool:
    return Path(path).is_dir() and bool(job_dirs(path))


def _fill_from_store(row: dict, job: Path) -> None:
    """A job killed before its summary.json: its numbers from its store."""
    snap = run_reader.snapshot(job, k=1, worst=False)
    row.update({"best_response": snap["best_response"], "n_evaluations": snap["n_evaluations"],
                "evaluations_to_best": snap["evaluations_to_best"],
                "status": f"stopped ({snap['meta'].get('status', '?')})"})


def write_sweep_page(sweep_dir: str | Path, rebuild_jobs: bool = False) -> Path:
    """(Re)build ``SWEEP_DIR/sweep.html``; ``rebuild_jobs`` also (re)builds each job's report.html
    (for ``stimopt-report`` on a sweep whose jobs were killed)."""
    from stimopt import sweep

    sweep_dir = Path(sweep_dir)
    rows, common = sweep.collect(sweep_dir)
    for r in rows:
        job = sweep_dir / r["job"]
        r["job_num"] = int(r["job"]) if r["job"].isdigit() else r["job"]
        has_store = run_reader.store_path(job).exists()
        if has_store and r["status"] == "missing":
            _fill_from_store(r, job)
        if has_store and rebuild_jobs:
            html_report.write_run_page(job)
        page = job / html_report.PAGE
        image = job / html_report.FILES / "best_00.png"
        r["page"] = f"{r['job']}/{html_report.PAGE}" if page.exists() else None
        r["image"] = f"{r['job']}/{html_report.FILES}/best_00.png" if image.exists() else None
    if rows and (rebuild_jobs or not (sweep_dir / "sweep.png").exists()):
        sweep.plot(rows, sweep_dir)
    html = _env.get_template("sweep.html").render(
        name=sweep_dir.name, rows=rows, common=common,
        plot="sweep.png" if (sweep_dir / "sweep.png").exists() else None,
    )
    out = sweep_dir / PAGE
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(html)
    tmp.replace(out)
    return out


def write_page_safely(sweep_dir: Path) -> None:
    """The end-of-sweep hook (stimopt.sweep.SweepReport): failure is one warning line."""
    import sys

    try:
        print(f"sweep page: {write_sweep_page(sweep_dir)}")
    except Exception as exc:
        print(f"stimopt: warning: sweep.html not written ({type(exc).__name__}: {exc}); "
              f"stimopt-report {sweep_dir} retries", file=sys.stderr)
