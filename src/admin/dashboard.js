// The dashboard: reads the admin API (same origin) every few seconds and draws it. Every value
// goes into the page as text (never as HTML): inventory templates come from client paths.
"use strict";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function pct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  const p = x * 100;
  return (p === 0 || p >= 10 ? p.toFixed(0) : p.toFixed(1)) + "%";
}

function ms(x) {
  return x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) + " ms" : x.toFixed(1) + " ms";
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

// A line chart of one or two series of [x, y] points, as SVG with a text alternative.
function chart(series, label, opts) {
  const w = opts.width || 300, h = opts.height || 60, pad = 2;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const title = document.createElementNS(SVG, "title");
  title.textContent = label;
  svg.append(title);
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) {
    title.textContent = label + ": no data";
    return svg;
  }
  const x0 = opts.from ?? Math.min(...all.map((p) => p[0]));
  const x1 = opts.to ?? Math.max(...all.map((p) => p[0]));
  const yMax = opts.yMax ?? Math.max(...all.map((p) => p[1]), 1e-9);
  const sx = (x) => pad + ((x - x0) / Math.max(x1 - x0, 1)) * (w - 2 * pad);
  const sy = (y) => h - pad - (y / yMax) * (h - 2 * pad);
  for (const s of series) {
    if (s.points.length === 0) continue;
    const path = document.createElementNS(SVG, "polyline");
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", s.color);
    path.setAttribute("stroke-width", "2");
    path.setAttribute("vector-effect", "non-scaling-stroke");
    path.setAttribute("points", s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "));
    path.dataset.points = String(s.points.length);
    svg.append(path);
    // The latest point as a dot: a series of one point (the first interval) still shows.
    const last = s.points[s.points.length - 1];
    const dot = document.createElementNS(SVG, "ellipse");
    dot.setAttribute("cx", sx(last[0]).toFixed(1));
    dot.setAttribute("cy", sy(last[1]).toFixed(1));
    dot.setAttribute("rx", String(opts.dotX || 3));
    dot.setAttribute("ry", "3");
    dot.setAttribute("fill", s.color);
    svg.append(dot);
  }
  return svg;
}

const LEGACY = "#1f4e9c", NEW = "#a34f00";

function sideSeries(points, f) {
  return (points || []).map((p) => [p.t, f(p)]);
}

function routeCard(r, series, from, to) {
  const s = (series && series.routes && series.routes[r.id]) || { legacy: [], new: [] };
  const every = (series && series.resolution_s) || 10;
  const card = el("article", { class: "route", "data-route": r.id, "aria-labelledby": "route-" + r.id });
  card.append(el("h3", { id: "route-" + r.id }, r.id + " ", el("code", {}, r.path)));
  const dl = el("dl", {});
  const row = (k, v, cls) => dl.append(el("dt", {}, k), el("dd", cls ? { class: cls } : {}, v));
  row("shift", r.shift, "shift");
  row("on the new side", r.requests ? pct(r.new_share) : "–", "new-share");
  row("requests", r.requests, "requests");
  row("legacy", `${r.legacy || "–"}: errors ${pct(r.sides.legacy.error_rate)}, p99 ${ms(r.sides.legacy.p99_ms)}`);
  row("new", `${r.new || "–"}: errors ${pct(r.sides.new.error_rate)}, p99 ${ms(r.sides.new.p99_ms)}`);
  card.append(dl);
  const charts = el("div", { class: "small-charts" });
  const both = (f) => [
    { color: LEGACY, points: sideSeries(s.legacy, f) },
    { color: NEW, points: sideSeries(s.new, f) },
  ];
  const opts = { from, to };
  const small = (title, data, extra) =>
    el("figure", {}, chart(data, `${r.id}: ${title}`, Object.assign({}, opts, extra || {})), el("figcaption", {}, title));
  charts.append(
    small("requests/s", both((p) => p.requests / every)),
    small("5xx share", both((p) => (p.requests ? p["5xx"] / p.requests : 0)), { yMax: 1 }),
    small("p99 ms", both((p) => p.p99_ms)),
  );
  card.append(charts);
  if (r.new) card.append(shiftForm(r));
  return card;
}

function shiftForm(r) {
  const input = el("input", { type: "text", inputmode: "decimal", value: r.shift, "aria-label": `new shift for ${r.id}` });
  const button = el("button", { type: "submit" }, "Set shift");
  const form = el("form", { class: "shift-form" }, input, button);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    confirmShift(r, input.value.trim());
  });
  return form;
}

function confirmShift(r, percent) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent =
    `Route ${r.id} (${r.path}): from ${r.shift} to ${percent}. The config file is changed, so it stays after a restart.`;
  document.getElementById("confirm-error").textContent = "";
  const token = document.getElementById("confirm-token");
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") return;
    const headers = { "content-type": "application/json" };
    if (token.value) headers.authorization = "Bearer " + token.value;
    try {
      const resp = await fetch(`/routes/${encodeURIComponent(r.id)}/shift`, {
        method: "PUT",
        headers,
        body: JSON.stringify({ percent }),
      });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        document.getElementById("confirm-error").textContent = `Not changed: ${body.error || resp.status}`;
        dialog.showModal();
        return;
      }
      refresh();
    } catch (err) {
      document.getElementById("confirm-error").textContent = "Not changed: " + err;
      dialog.showModal();
    }
  };
  dialog.showModal();
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) =>
    c instanceof Node ? c : el("td", typeof c === "number" ? { class: "num" } : {}, c)))));
}

function render(status, history, inventory) {
  document.getElementById("headline-share").textContent = pct(status.new_share);
  document.getElementById("headline-requests").textContent = status.requests;
  document.getElementById("recent-seconds").textContent = status.recent.seconds + " s";
  document.getElementById("recent-share").textContent = pct(status.recent.new_share) + " on new sides";
  const b = status.burn_down;
  const line = document.getElementById("burn-down-line");
  const bd = document.getElementById("burn-down-chart");
  if (b) {
    const before = b.before ? `, ${b.new_share > b.before.new_share ? "up" : b.new_share < b.before.new_share ? "down" : "as"} from ${pct(b.before.new_share)} on ${b.before.date}` : "";
    line.textContent = `${pct(b.new_share)} of requests no longer reach the monolith (${b.date})${before}.`;
    const pts = b.days.map((d, i) => [i, d.new_share]);
    bd.replaceChildren(chart([{ color: NEW, points: pts }], "share served by new sides per day", { width: 1000, height: 140, yMax: 1 }));
  } else {
    line.textContent = "No traffic yet.";
  }
  const series = status.series;
  const routes = document.getElementById("routes");
  routes.replaceChildren(...status.routes.map((r) => routeCard(r, series, series && series.from, series && series.to)));

  const ups = [];
  for (const [name, u] of Object.entries(status.upstreams || {})) {
    if (u.addresses.length === 0) ups.push([name, u.kind, "–", "–"]);
    for (const a of u.addresses) {
      const state = a.up ? "in rotation" : a.ejected ? "ejected" : a.healthy === false ? "unhealthy" : "out of rotation";
      const td = el("td", state === "in rotation" ? {} : { class: "down" }, state);
      ups.push([name, u.kind, el("td", {}, el("code", {}, a.address)), td]);
    }
  }
  fill(document.querySelector("#upstreams tbody"), ups);

  fill(document.querySelector("#inventory tbody"), inventory.rows.map((r) => [
    pct(r.share), r.requests, el("td", {}, el("code", {}, r.template)),
    r.source === "_default" ? "unmatched" : r.source, r.methods.join(", "), pct(r.error_rate), ms(r.p99_ms),
  ]));

  const items = history.entries.slice().reverse().map((e) => {
    const what = e.kind === "shift"
      ? `shift ${e.route}: ${e.from ? e.from + " → " : ""}${e.to}`
      : e.ok ? "reload applied" : `reload refused: ${(e.error || "").split("\n")[0]}`;
    return el("li", {}, el("time", { datetime: e.at }, e.at.replace("T", " ").slice(0, 19)), " ", what, ` (${e.how}${e.client ? " from " + e.client : ""})`);
  });
  document.getElementById("history").replaceChildren(...items);
  document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString();
  document.body.dataset.loaded = "1";
}

async function refresh() {
  try {
    const [status, history, inventory] = await Promise.all([
      getJson("/status?series=1h"), getJson("/history?limit=20"), getJson("/inventory?limit=20"),
    ]);
    // A dialog being answered is not redrawn under the user.
    if (!document.getElementById("confirm").open) render(status, history, inventory);
  } catch (err) {
    document.getElementById("updated").textContent = "Cannot reach the admin API: " + err.message;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
