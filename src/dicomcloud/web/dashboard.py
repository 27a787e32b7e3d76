"""`/dashboard`: the warehouse's statistics as charts, drawn in the browser with Chart.js from `/api/stats`.

Sizes in decimal units (GB = 10^9 bytes), rates per day, the studies read most with their patient, description
and date and a link that opens each in the viewer (`/viewer/`), conversion failures with their syntaxes and
reason. A period (`?range=24h|7d|30d|all`, 7 days unless chosen) bounds what was received, read and failed;
what is stored is counted as it is now. Every value reaches the page as text (`textContent`), never as markup.

Chart.js is not committed: `./dev` fetches it from npm into the cache folder
(`${XDG_CACHE_HOME:-~/.cache}/dicomcloud/npm`), or `warehouse.chart_js` names the file. Without it the
page still shows the numbers and says the charts are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from dicomcloud.errors import NotFound

router = APIRouter(tags=["Statistics"])

CHART_JS = Path("npm/node_modules/chart.js/dist/chart.umd.min.js")


def chart_js_path(configured: str) -> Path:
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dicomcloud" / CHART_JS


@router.get("/dashboard", response_class=HTMLResponse, summary="Statistics dashboard")
def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE)


@router.get("/dashboard/chart.js", summary="Chart.js, as fetched from npm")
def chart_js(request: Request) -> FileResponse:
    path = chart_js_path(request.app.state.archive.runtime.settings.warehouse.chart_js)
    if not path.is_file():
        raise NotFound(f"Chart.js is not installed at {path}: run ./dev, or set warehouse.chart_js")
    return FileResponse(path, media_type="text/javascript")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dicomcloud statistics</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px; background: #fff; color: #222; }
  h2 { font-size: 16px; margin: 20px 0 8px; }
  nav a { margin-right: 12px; }
  nav a[aria-current] { font-weight: bold; text-decoration: none; color: #222; }
  .figures { display: flex; flex-wrap: wrap; gap: 16px; }
  .figures div { border: 1px solid #ddd; padding: 8px 16px; min-width: 110px; }
  .figures b { display: block; font-size: 22px; }
  .charts { display: grid; grid-template-columns: repeat(2, 560px); gap: 16px; margin-top: 16px; }
  .chart { width: 560px; height: 280px; }
  table { border-collapse: collapse; }
  td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
  td.number { text-align: right; }
  #error { color: #b00; }
</style>
<script src="/dashboard/chart.js"></script>
</head>
<body>
<h1>dicomcloud statistics</h1>
<nav id="ranges">Period:
  <a href="?range=24h" data-range="24h">last 24 hours</a><a href="?range=7d" data-range="7d">last 7 days</a>
  <a href="?range=30d" data-range="30d">last 30 days</a><a href="?range=all" data-range="all">all time</a>
</nav>
<p id="error"></p>
<h2>Stored now</h2>
<div class="figures">
  <div>Studies<b id="studies">-</b></div><div>Series<b id="series">-</b></div>
  <div>Instances<b id="instances">-</b></div><div>Size<b id="size">-</b></div>
</div>
<h2>In the period</h2>
<div class="figures">
  <div>Received<b id="received-instances">-</b><span id="received-studies"></span></div>
  <div>Received size<b id="received-size">-</b></div>
  <div>Ingest rate<b id="rate-size">-</b><span id="rate-instances"></span></div>
  <div>Study reads<b id="reads">-</b></div>
  <div>Failed requests<b id="failed">-</b><span>4xx and 5xx, not reads</span></div>
</div>
<div class="charts">
  <div class="chart"><canvas id="modalities"></canvas></div>
  <div class="chart"><canvas id="tenants"></canvas></div>
  <div class="chart"><canvas id="received"></canvas></div>
  <div class="chart"><canvas id="endpoints"></canvas></div>
</div>
<h2>Most read studies</h2>
<table id="most-read"><thead><tr><th>Patient</th><th>Patient ID</th><th>Study</th><th>Date</th><th>Reads</th>
  <th>Sent</th><th>Tenant</th><th></th></tr></thead><tbody></tbody></table>
<h2>Conversion failures</h2>
<table id="conversion-failures"><thead><tr><th>From</th><th>To</th><th>Reason</th><th>Failures</th>
  <th>Last</th></tr></thead><tbody></tbody></table>
<script>
const range = new URLSearchParams(location.search).get("range") || "7d";
const get = (name, params) => {
  const query = new URLSearchParams({ range: range, ...params });
  return fetch("/api/stats/" + name + "?" + query).then((r) => {
    if (!r.ok) throw new Error(name + ": HTTP " + r.status);
    return r.json();
  });
};
const UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];
function size(bytes) {
  let value = Number(bytes) || 0, unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) { value /= 1000; unit += 1; }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return value.toFixed(digits) + " " + UNITS[unit];
}
const count = (n) => Number(n || 0).toLocaleString("en-US", { maximumFractionDigits: 1 });
// "1 study", "0 studies", "1.5 instances": the noun agrees with the number as shown.
const counted = (n, one, many) => { const shown = count(n); return shown + " " + (shown === "1" ? one : many); };
const dicomDate = (d) => (d && /^\\d{8}$/.test(d) ? d.slice(0, 4) + "-" + d.slice(4, 6) + "-" + d.slice(6) : d || "");
function personName(value) {
  const [family, ...given] = (value || "").split("=")[0].split("^");
  const rest = given.filter(Boolean).join(" ");
  return rest ? family + ", " + rest : family;
}
const show = (id, text) => { document.getElementById(id).textContent = text; };
function row(table, cells) {
  const tr = document.querySelector(table + " tbody").insertRow();
  for (const [text, numeric] of cells) {
    const td = tr.insertCell();
    td.textContent = text;
    if (numeric) td.className = "number";
  }
  return tr;
}
function chart(id, labels, label, data, color, format) {
  new Chart(document.getElementById(id), {
    type: "bar",
    data: { labels: labels, datasets: [{ label: label, data: data, backgroundColor: color, borderColor: color }] },
    options: { animation: false, responsive: true, maintainAspectRatio: false,
               scales: { y: { ticks: { callback: (v) => format(v) } } },
               plugins: { title: { display: true, text: label }, legend: { display: false },
                          tooltip: { callbacks: { label: (c) => format(c.parsed.y) } } } },
  });
}
async function main() {
  for (const link of document.querySelectorAll("#ranges a")) {
    if (link.dataset.range === range) link.setAttribute("aria-current", "page");
  }
  const hourly = range === "24h";
  const [summary, ingest, endpoints, reads, failures] = await Promise.all([
    get("summary"), get(hourly ? "received_per_hour" : "received_per_day", { limit: hourly ? 25 : 366 }),
    get("slowest_endpoints", { limit: 10 }), get("most_read_studies", { limit: 10 }),
    get("transcode_failures", { limit: 20 })]);
  for (const key of ["studies", "series", "instances"]) show(key, count(summary.totals[key]));
  show("size", size(summary.totals.bytes));
  const received = summary.received;
  show("received-instances", counted(received.instances, "instance", "instances"));
  show("received-studies", counted(received.studies, "study", "studies"));
  show("received-size", size(received.bytes));
  show("rate-size", size(received.bytes_per_day) + " per day");
  show("rate-instances", counted(received.instances_per_day, "instance", "instances") + " per day");
  show("reads", count(summary.requests.reads));
  show("failed", count(summary.requests.failed));
  for (const r of reads) {
    const tr = row("#most-read", [[personName(r.patient_name)], [r.patient_id || ""],
      [r.study_description || r.study_instance_uid], [dicomDate(r.study_date)], [count(r.read_count), true],
      [size(r.bytes_sent), true], [r.tenant_id]]);
    const open = document.createElement("a");
    open.href = "/viewer/viewer?StudyInstanceUIDs=" + encodeURIComponent(r.study_instance_uid);
    open.textContent = "open in viewer";
    open.title = r.study_instance_uid;
    tr.insertCell().append(open);
  }
  for (const f of failures) {
    row("#conversion-failures", [[f.transfer_syntax_name || f.transfer_syntax],
      [f.target_syntax_name || f.target_syntax], [f.reason || ""], [count(f.failures), true],
      [(f.last_failed_at || "").replace("T", " ").slice(0, 19)]]);
  }
  if (typeof Chart === "undefined") throw new Error("Chart.js is not installed: the charts cannot be drawn");
  chart("modalities", summary.modalities.map((m) => m.modality || "(none)"), "Instances stored per modality",
        summary.modalities.map((m) => m.instances), "rgb(54, 162, 235)", count);
  chart("tenants", summary.tenants.map((t) => t.tenant_id), "Size stored per tenant",
        summary.tenants.map((t) => t.bytes), "rgb(255, 99, 132)", size);
  ingest.reverse();
  const when = (d) => (hourly ? d.received_date.slice(5) + " " + String(d.received_hour).padStart(2, "0") + ":00"
                              : d.received_date);
  chart("received", ingest.map(when), hourly ? "Instances received per hour" : "Instances received per day",
        ingest.map((d) => d.instances), "rgb(75, 192, 192)", count);
  chart("endpoints", endpoints.map((e) => e.method + " " + e.route), "Mean duration (ms)",
        endpoints.map((e) => e.mean_ms), "rgb(255, 159, 64)", count);
}
main().then(() => { document.body.dataset.ready = "true"; })
      .catch((e) => {
        document.getElementById("error").textContent = e.message;
        document.body.dataset.ready = "error";
      });
</script>
</body>
</html>
"""
