// What the service's pages share (the fairness view, the release dashboards): fetching the
// API as the signed-in user and drawing with plotly. The page sets LH = {page, xsrf} first.
const page = LH.page;
const api = page + "api/";
// cookie-authenticated requests carry the hub's XSRF token (without it every fetch is 401)
const headers = {"X-XSRFToken": LH.xsrf};
async function getJSON(url) {
  const resp = await fetch(url, {headers, credentials: "same-origin"});
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(`${url}: ${resp.status} ${body.error || resp.statusText}`);
  return body;
}
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const pct = f => `${Math.round(f * 100)}%`;
const bar = f => `<div class="progress lh-progress"><div class="progress-bar" style="width:${Math.min(100, Math.round(f * 100))}%"></div></div><small>${pct(f)}</small>`;
const gib = b => (b / 2 ** 30).toFixed(1) + " GiB";
const when = t => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
function fill(id, rows) { document.querySelector(`#${id} tbody`).innerHTML = rows.join("") || '<tr><td class="text-body-secondary" colspan="8">none</td></tr>'; }
const layout = extra => ({margin: {l: 50, r: 10, t: 10, b: 40}, height: 260, legend: {orientation: "h"}, ...extra});
function draw(id, traces, extra) {
  Plotly.react(id, traces, layout(extra), {displayModeBar: false, responsive: true});
}
function showError(err) {
  const box = document.getElementById("error");
  box.textContent = `Could not load: ${err.message}`;
  box.style.display = "block";
}
