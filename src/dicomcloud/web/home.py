"""`/`: the home page a person lands on. It lists the studies (QIDO-RS, from the browser), opens each one in
the viewer, downloads it as a ZIP (WADO-RS with `accept=application/zip`) and, for a user allowed to,
deletes it (the DELETE route); one click leads to the viewer's own study list, where files are uploaded.

`/?tenant=<id>` shows a named tenant. With auth on, the page sends the bearer token it was given in its
fragment (`/#token=…`, kept in the tab's sessionStorage) and passes it on to the viewer (`?token=`);
`/api/access` tells it which actions the token allows, so it offers only those.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dicomcloud.dicom.uids import validate_tenant
from dicomcloud.web.auth import Access, Authenticator

router = APIRouter(tags=["Home"])


def _tenant(request: Request, tenant: str | None) -> str:
    return validate_tenant(tenant) if tenant else request.app.state.archive.settings.tenant


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(request: Request, tenant: str | None = None) -> HTMLResponse:
    settings = request.app.state.archive.settings
    page = {
        "prefix": str(request.scope.get("root_path", "")).rstrip("/"),
        "root": settings.http.root_path,
        "tenant": validate_tenant(tenant) if tenant else "",
    }
    # `</` cannot close the script element the settings sit in.
    return HTMLResponse(PAGE.replace("{page}", json.dumps(page).replace("</", "<\\/")))


@router.get("/api/access", summary="What the request's token may do on a tenant (everything when auth is off)")
def access(request: Request, tenant: str | None = None) -> dict[str, bool]:
    auth: Authenticator | None = request.app.state.auth
    granted = frozenset(Access) if auth is None else auth.granted(request, _tenant(request, tenant))
    return {kind.value: kind in granted for kind in (Access.READ, Access.WRITE, Access.DELETE)}


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dicomcloud</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; }
  header { display: flex; gap: 24px; align-items: baseline; }
  table { border-collapse: collapse; margin-top: 16px; }
  td, th { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
  #error { color: #b00; }
  button { cursor: pointer; }
</style>
<script id="page" type="application/json">{page}</script>
</head>
<body>
<header>
  <h1>dicomcloud</h1>
  <a id="study-list" href="#">Open the study list in the viewer</a> <span>(upload DICOM files there)</span>
  <a id="dashboard" href="#">Dashboard</a>
  <a id="docs" href="#">API</a>
</header>
<p id="error"></p>
<table id="studies">
<thead><tr><th>Patient</th><th>Patient ID</th><th>Date</th><th>Description</th><th>Modalities</th>
<th>Instances</th><th></th><th></th><th></th></tr></thead>
<tbody></tbody>
</table>
<script>
const page = JSON.parse(document.getElementById("page").textContent);
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  sessionStorage.setItem("dicomcloud.token", fragment.get("token"));
  history.replaceState(null, "", location.pathname + location.search);
}
const token = sessionStorage.getItem("dicomcloud.token");
const tenantPath = page.tenant ? "/" + encodeURIComponent(page.tenant) : "";
const dicomweb = page.prefix + tenantPath + page.root;
const viewer = page.prefix + tenantPath + "/viewer";
const withToken = (url) => token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
const headers = (extra) => Object.assign(token ? { Authorization: "Bearer " + token } : {}, extra || {});
document.getElementById("study-list").href = withToken(viewer + "/");
document.getElementById("dashboard").href = page.prefix + "/dashboard";
document.getElementById("docs").href = page.prefix + "/docs";

function value(study, tag) {
  const element = study[tag];
  const first = element && element.Value ? element.Value : [];
  return first.map((v) => (typeof v === "object" ? v.Alphabetic || "" : String(v))).join(", ");
}
async function check(response, what) {
  if (!response.ok) throw new Error(what + ": HTTP " + response.status + " " + (await response.text()));
  return response;
}
async function download(uid, link) {
  const response = await check(await fetch(link.href, { headers: headers() }), "download");
  const url = URL.createObjectURL(await response.blob());
  const anchor = Object.assign(document.createElement("a"), { href: url, download: uid + ".zip" });
  document.body.appendChild(anchor);
  anchor.click();
  anchor.remove();
  URL.revokeObjectURL(url);
}
async function remove(uid, row) {
  if (!confirm("Delete study " + uid + " from the archive?")) return;
  await check(await fetch(dicomweb + "/studies/" + uid, { method: "DELETE", headers: headers() }), "delete");
  row.remove();
}
function action(row, element, handler) {
  row.insertCell().appendChild(element);
  if (handler) {
    element.addEventListener("click", (event) => {
      event.preventDefault();
      handler().catch(failed);
    });
  }
}
async function main() {
  const tenantQuery = page.tenant ? "?tenant=" + encodeURIComponent(page.tenant) : "";
  const allowed = await (await check(await fetch(page.prefix + "/api/access" + tenantQuery, { headers: headers() }),
                                     "access")).json();
  const fields = "00081030,00080061,00201208";
  const response = await check(await fetch(dicomweb + "/studies?includefield=" + fields + "&limit=1000",
                                           { headers: headers({ Accept: "application/dicom+json" }) }), "studies");
  const studies = response.status === 204 ? [] : await response.json();
  const rows = document.querySelector("#studies tbody");
  for (const study of studies) {
    const uid = value(study, "0020000D");
    const row = rows.insertRow();
    row.dataset.uid = uid;
    for (const tag of ["00100010", "00100020", "00080020", "00081030", "00080061", "00201208"]) {
      row.insertCell().textContent = value(study, tag);
    }
    const open = Object.assign(document.createElement("a"),
      { href: withToken(viewer + "/viewer?StudyInstanceUIDs=" + encodeURIComponent(uid)), textContent: "Open" });
    action(row, open);
    const zip = Object.assign(document.createElement("a"), {
      href: dicomweb + "/studies/" + uid + "?accept=application/zip", textContent: "ZIP", className: "zip" });
    zip.download = uid + ".zip";
    action(row, zip, token ? () => download(uid, zip) : null);
    if (allowed.delete) {
      const button = Object.assign(document.createElement("button"), { textContent: "Delete", className: "delete" });
      action(row, button, () => remove(uid, row));
    }
  }
}
function failed(error) {
  document.getElementById("error").textContent = error.message;
  return "error";
}
main().then(() => "true", failed).then((state) => { document.body.dataset.ready = state; });
</script>
</body>
</html>
"""
