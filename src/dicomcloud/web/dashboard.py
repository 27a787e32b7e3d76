"""`/dashboard`: the warehouse's statistics as charts, drawn in the browser with Chart.js from `/api/stats`.

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
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px; background: #fff; color: #222; }
  .totals { display: flex; gap: 24px; margin-bottom: 16px; }
  .totals div { border: 1px solid #ddd; padding: 8px 16px; }
  .totals b { display: block; font-size: 22px; }
  .charts { display: grid; grid-template-columns: repeat(2, 560px); gap: 16px; }
  .chart { width: 560px; height: 280px; }
  table { border-collapse: collapse; margin-top: 16px; }
  td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
  #error { color: #b00; }
</style>
<script src="/dashboard/chart.js"></script>
</head>
<body>
<h1>dicomcloud statistics</h1>
<p id="error"></p>
<div class="totals">
  <div>Studies<b id="studies">-</b></div><div>Series<b id="series">-</b></div>
  <div>Instances<b id="instances">-</b></div><div>Bytes<b id="bytes">-</b></div>
</div>
<div class="charts">
  <div class="chart"><canvas id="modalities"></canvas></div>
  <div class="chart"><canvas id="tenants"></canvas></div>
  <div class="chart"><canvas id="received"></canvas></div>
  <div class="chart"><canvas id="endpoints"></canvas></div>
</div>
<table id="most-read"><thead><tr><th>Tenant</th><th>Study</th><th>Reads</th></tr></thead><tbody></tbody></table>
<script>
const get = (name) => fetch("/api/stats/" + name).then((r) => {
  if (!r.ok) throw new Error(name + ": HTTP " + r.status);
  return r.json();
});
function chart(id, type, labels, label, data, color) {
  new Chart(document.getElementById(id), {
    type: type,
    data: { labels: labels, datasets: [{ label: label, data: data, backgroundColor: color, borderColor: color }] },
    options: { animation: false, responsive: true, maintainAspectRatio: false,
               plugins: { title: { display: true, text: label } } },
  });
}
async function main() {
  const [summary, received, endpoints, reads] = await Promise.all(
    [get("summary"), get("received_per_day?limit=30"), get("slowest_endpoints?limit=10"),
     get("most_read_studies?limit=10")]);
  for (const key of ["studies", "series", "instances", "bytes"]) {
    document.getElementById(key).textContent = summary.totals[key];
  }
  const rows = document.querySelector("#most-read tbody");
  for (const r of reads) {
    const tr = rows.insertRow();
    for (const v of [r.tenant_id, r.study_instance_uid, r.read_count]) tr.insertCell().textContent = v;
  }
  if (typeof Chart === "undefined") throw new Error("Chart.js is not installed: the charts cannot be drawn");
  chart("modalities", "bar", summary.modalities.map((m) => m.modality || "(none)"), "Instances per modality",
        summary.modalities.map((m) => m.instances), "rgb(54, 162, 235)");
  chart("tenants", "bar", summary.tenants.map((t) => t.tenant_id), "Bytes per tenant",
        summary.tenants.map((t) => t.bytes), "rgb(255, 99, 132)");
  received.reverse();
  chart("received", "bar", received.map((d) => d.received_date), "Instances received per day",
        received.map((d) => d.instances), "rgb(75, 192, 192)");
  chart("endpoints", "bar", endpoints.map((e) => e.method + " " + e.route), "Mean duration (ms)",
        endpoints.map((e) => e.mean_ms), "rgb(255, 159, 64)");
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
