// The cluster page: polls /ui/cluster.json every second, redraws the node table (the same
// columns the server rendered first), keeps each node's lag for the last five minutes for the
// chart, and sends promote/switchover with the admin token the operator types in.
"use strict";

const POLL_MS = 1000;
const HISTORY_MS = 5 * 60 * 1000;
const COLORS = ["#1a73e8", "#e8710a", "#188038", "#a142f4", "#d93025", "#12b5cb", "#9aa0a6"];
const servedBy = document.body.dataset.servedBy;
const lagHistory = {}; // node id -> [[time ms, lag seconds]]
let last = null;

const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("meridian-admin-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("meridian-admin-token", tokenInput.value));

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function cell(html, cls) {
  return `<td${cls ? ` class="${cls}"` : ""}>${html}</td>`;
}

function syncCell(n) {
  if (!n.sync_mode) return "—";
  const inSync = n.in_sync === null || n.in_sync === undefined ? "" : n.in_sync ? ' <span class="ok">in sync</span>' : ' <span class="bad">out of sync</span>';
  return esc(n.sync_mode) + inSync;
}

function peersCell(n) {
  const peers = (n.peers || []).filter(p => p.id !== "witness");
  if (!peers.length) return "—";
  return peers.map(p => `${esc(p.id)} <span class="${p.healthy ? "ok" : "bad"}">${p.healthy ? "up" : "down"}</span>`).join("<br>");
}

function witnessCell(n) {
  if (n.witness_healthy === null || n.witness_healthy === undefined) return "—";
  return n.witness_healthy ? '<span class="ok">reachable</span>' : '<span class="bad">unreachable</span>';
}

function actionsCell(n, view) {
  if (!n.reachable || view.mode !== "ha_standby") return "";
  if (n.node_id !== servedBy) {
    return n.url ? `<a href="${esc(n.url)}/ui">open its page</a>` : "";
  }
  if (n.role === "standby") return `<button data-action="promote">promote</button>`;
  if (n.role === "primary") return `<button data-action="switchover">switchover</button>`;
  return "";
}

function row(n, view) {
  const role = n.role + (n.membership ? ` (${n.membership})` : "");
  const lag = n.reachable ? `${n.lag_seconds.toFixed(1)} s` + (n.lag_records === null || n.lag_records === undefined ? "" : ` / ${n.lag_records} rec`) : "—";
  const notes = n.reachable ? (n.notes || []).map(esc).join("<br>") : esc(n.error);
  return `<tr data-node="${esc(n.node_id)}" data-role="${esc(n.role)}" class="${n.reachable ? "" : "down"}">` +
    cell(`${esc(n.node_id)}${n.node_id === servedBy ? " (this page)" : ""}<div class="url">${esc(n.url || "")}</div>`, "node") +
    cell(esc(role), `role role-${esc(n.role)}`) +
    cell(esc(n.reachable ? n.health : "down"), `health h-${esc(n.reachable ? n.health : "unknown")}`) +
    cell(n.reachable ? esc(n.epoch_label || n.epoch) : "—", "num") +
    cell(n.reachable ? `${n.wal_last_index} / ${n.wal_durable_index}` : "—", "num") +
    cell(n.reachable ? n.applied_index : "—", "num") +
    cell(lag, "num") +
    cell(syncCell(n)) +
    cell(peersCell(n)) +
    cell(witnessCell(n)) +
    cell(notes, "notes") +
    cell(actionsCell(n, view), "actions") +
    "</tr>";
}

// multi_region: the region leader's view of its links (it is the node that ships).
function renderRegions(view) {
  const withRegion = view.nodes.filter(n => n.region);
  const section = document.getElementById("regions-section");
  section.hidden = !withRegion.length;
  if (!withRegion.length) return;
  const r = (withRegion.find(n => n.region.is_region_leader) || withRegion[0]).region;
  document.getElementById("region-summary").innerHTML =
    `region <b>${esc(r.region)}</b> · primary region <b>${esc(r.primary_region || "none (active_active)")}</b>` +
    (r.region_epoch != null ? ` · region epoch ${r.region_epoch}` : "") +
    ` · ${r.takes_writes ? "takes writes" : "relays writes to the primary region"}` +
    (r.demoted_writes_merged ? ` · <span class="bad">${r.demoted_writes_merged} version(s) from a demoted region merged</span>` : "");
  document.querySelector("#regions tbody").innerHTML = (r.remotes || []).map(l =>
    "<tr>" + cell(esc(l.region)) + cell(esc(l.address || "—")) + cell(String(l.acknowledged)) +
    cell(String(l.lag_entries)) + cell(l.lag_seconds.toFixed(2)) + cell(String(l.shipped_versions)) +
    cell(l.last_error ? `<span class="bad">${esc(l.last_error)}</span>` : "—") + "</tr>").join("");
}

function render(view) {
  last = view;
  document.querySelector("#nodes tbody").innerHTML = view.nodes.map(n => row(n, view)).join("");
  const tails = view.nodes.flatMap(n => (n.divergent_tails || []).map(t => `<li>${esc(n.node_id)}: ${t.records} record(s) after index ${t.after_index} in <code>${esc(t.file)}</code></li>`));
  document.getElementById("divergent").innerHTML = tails.length ? tails.join("") : "<li>none</li>";
  document.getElementById("updated").textContent = "updated " + new Date(view.generated_at_ms).toLocaleTimeString();
  renderRegions(view);
  const now = Date.now();
  for (const n of view.nodes) {
    const h = (lagHistory[n.node_id] = lagHistory[n.node_id] || []);
    h.push([now, n.reachable ? n.lag_seconds : null]);
    while (h.length && h[0][0] < now - HISTORY_MS) h.shift();
  }
  drawChart(now);
}

function drawChart(now) {
  const c = document.getElementById("lag");
  const g = c.getContext("2d");
  const pad = 34;
  g.clearRect(0, 0, c.width, c.height);
  let max = 1;
  for (const h of Object.values(lagHistory)) for (const [, v] of h) if (v !== null && v > max) max = v;
  g.strokeStyle = "#ccc";
  g.fillStyle = "#666";
  g.font = "11px sans-serif";
  g.beginPath();
  g.moveTo(pad, 4);
  g.lineTo(pad, c.height - 16);
  g.lineTo(c.width - 4, c.height - 16);
  g.stroke();
  g.fillText(max.toFixed(1) + " s", 2, 12);
  g.fillText("0", 20, c.height - 16);
  g.fillText("-5 min", pad, c.height - 3);
  g.fillText("now", c.width - 28, c.height - 3);
  const x = t => pad + ((t - (now - HISTORY_MS)) / HISTORY_MS) * (c.width - pad - 4);
  const y = v => c.height - 16 - (v / max) * (c.height - 24);
  const legend = [];
  Object.keys(lagHistory).sort().forEach((id, i) => {
    const color = COLORS[i % COLORS.length];
    legend.push(`<span><i style="background:${color}"></i>${esc(id)}</span>`);
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    let pen = false;
    for (const [t, v] of lagHistory[id]) {
      if (v === null) { pen = false; continue; }
      if (pen) g.lineTo(x(t), y(v)); else g.moveTo(x(t), y(v));
      pen = true;
    }
    g.stroke();
  });
  document.getElementById("legend").innerHTML = legend.join("");
}

async function poll() {
  const banner = document.getElementById("banner");
  try {
    const r = await fetch("/ui/cluster.json", { cache: "no-store" });
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    render(await r.json());
    banner.hidden = true;
  } catch (e) {
    banner.hidden = false;
    banner.textContent = `${servedBy} does not answer (${e.message}); showing the last state seen. Open another node's page to follow the cluster.`;
  }
}

function confirmText(action, n) {
  const primary = last.nodes.find(x => x.role === "primary");
  if (action === "switchover") {
    const standby = last.nodes.find(x => x.role === "standby");
    return `Switch over from ${n.node_id} to ${standby ? standby.node_id : "the standby"}?\n\n` +
      `A planned handover: ${n.node_id} stops taking writes, waits until the standby holds every record, then the standby becomes primary. ` +
      "No acknowledged write is lost; new writes are refused for the moment of the handover.";
  }
  const force = document.getElementById("force").checked;
  const behind = n.lag_records === null || n.lag_records === undefined ? "an unknown number of" : n.lag_records;
  return `Promote ${n.node_id} to primary${force ? " (FORCE)" : ""}?\n\n` +
    `${primary && primary.reachable ? `The current primary ${primary.node_id} is still answering: it will be fenced and stop taking writes. ` : ""}` +
    `Writes the old primary acknowledged that ${n.node_id} has not received are lost: it is ${behind} record(s) and ${n.lag_seconds.toFixed(1)} s behind, ` +
    `sync level ${n.sync_mode || "?"}, ${n.in_sync ? "recorded in sync (in sync levels nothing acknowledged is lost)" : "NOT recorded in sync (acknowledged writes may be lost)"}.` +
    (force ? "\n\nFORCE promotes it even when it is not in sync." : "");
}

document.querySelector("#nodes").addEventListener("click", async ev => {
  const b = ev.target.closest("button[data-action]");
  if (!b || !last) return;
  const action = b.dataset.action;
  const n = last.nodes.find(x => x.node_id === b.closest("tr").dataset.node);
  if (!n || !window.confirm(confirmText(action, n))) return;
  const msg = document.getElementById("message");
  const url = action === "promote" ? `/admin/promote${document.getElementById("force").checked ? "?force=true" : ""}` : "/admin/switchover";
  const headers = tokenInput.value ? { Authorization: "Bearer " + tokenInput.value } : {};
  try {
    const r = await fetch(url, { method: "POST", headers });
    const text = await r.text();
    msg.textContent = `${action}: ${r.status} ${text}`;
    msg.className = r.ok ? "ok" : "bad";
  } catch (e) {
    msg.textContent = `${action} failed: ${e.message}`;
    msg.className = "bad";
  }
  poll();
});

poll();
setInterval(poll, POLL_MS);
