// Prism operator console: reads the admin JSON API and draws tables and SVG charts.
// No framework and nothing from a CDN. Every number shown carries data-src (which API
// document) and data-path (where in it), so a test can compare the page with the API.
// A self-contained report (`prism experiments report`) embeds this file with the data in
// window.PRISM_REPORT and renders the same experiment view once, without buttons.
"use strict";

const REFRESH_MS = 2000;
const KEY_STORE = "prism-admin-key";
const SOURCES = {
  targets: "/admin/targets",
  policy: "/admin/policy",
  cache: "/admin/cache",
  experiments: "/admin/experiments",
};
const ARM_COLOURS = ["#3446a8", "#c4320a", "#12805c", "#b54708", "#7a2e9e", "#0e7090"];

function el(tag, attrs, ...children) {
  const svg = ["svg", "line", "rect", "circle", "text", "polyline", "g", "title"].includes(tag);
  const node = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  return String(v);
}

// a number cell the test can check: the API's own value, as the API gave it
function num(src, path, value, cls) {
  return el("td", { class: "num " + (cls || ""), "data-src": src, "data-path": JSON.stringify(path) },
    fmt(value));
}

function ratePct(v) {
  return v === null || v === undefined ? "–" : (100 * v).toFixed(2) + "%";
}

// --- API --------------------------------------------------------------------------------

class Unauthorised extends Error {}

async function api(path, method) {
  const headers = { accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.authorization = "Bearer " + key;
  const r = await fetch(path, { method: method || "GET", headers });
  if (r.status === 401 || r.status === 403) throw new Unauthorised(String(r.status));
  const body = await r.json();
  if (!r.ok) throw new Error(body.detail || body.title || r.status);
  return body;
}

function showLogin(main, reason) {
  main.replaceChildren(
    el("div", { class: "card", id: "login" },
      el("h2", {}, "Admin key"),
      el("p", { class: "muted" },
        reason === "403" ? "That key is not an admin key." : "This gateway needs an admin key."),
      el("input", { id: "key", type: "password", placeholder: "PRISM_ADMIN_KEYS key" }),
      el("button", {
        class: "primary", id: "save-key",
        onclick: () => {
          sessionStorage.setItem(KEY_STORE, document.getElementById("key").value);
          refresh();
        },
      }, "Use key")));
}

// --- pages ------------------------------------------------------------------------------

let previousTargets = null; // {time, calls by target}: requests/s between two refreshes

function targetsPage(data, policy) {
  const now = performance.now();
  const rows = Object.entries(data.targets).sort(([a], [b]) => a.localeCompare(b));
  const rates = {};
  for (const [key, t] of rows) {
    if (previousTargets && key in previousTargets.calls) {
      const dt = (now - previousTargets.time) / 1000;
      rates[key] = dt > 0 ? ((t.calls - previousTargets.calls[key]) / dt).toFixed(1) : null;
    }
  }
  previousTargets = { time: now, calls: Object.fromEntries(rows.map(([k, t]) => [k, t.calls])) };
  const health = (t) => t.circuit.state === "closed"
    ? (t.error_rate > 0.05 ? ["degraded", "warn"] : ["up", "ok"])
    : [t.circuit.state === "open" ? "down" : "probing", t.circuit.state === "open" ? "bad" : "warn"];
  return [
    el("h2", {}, "Routes"),
    el("div", { class: "card" },
      el("table", {},
        el("tr", {}, el("th", {}, "route (first match wins)")),
        policy.routes.map((r) => el("tr", { "data-route": r }, el("td", {}, r))))),
    el("h2", {}, "Targets"),
    el("div", { class: "card" },
      el("table", { id: "targets" },
        el("tr", {}, ["target", "health", "p50 ms", "p95 ms", "error rate", "circuit", "req/s",
          "in flight", "calls", "failures"].map((h) => el("th", {}, h))),
        rows.map(([key, t]) => {
          const [word, cls] = health(t);
          const p = ["targets", key];
          return el("tr", { "data-target": key },
            el("td", {}, key),
            el("td", {}, el("span", { class: "badge " + cls }, word)),
            num("targets", [...p, "p50_ms"], t.p50_ms),
            num("targets", [...p, "p95_ms"], t.p95_ms),
            num("targets", [...p, "error_rate"], t.error_rate),
            el("td", { "data-src": "targets", "data-path": JSON.stringify([...p, "circuit", "state"]) },
              t.circuit.state),
            el("td", { class: "num", "data-rate": key }, fmt(rates[key])),
            num("targets", [...p, "in_flight"], t.in_flight),
            num("targets", [...p, "calls"], t.calls),
            num("targets", [...p, "failures"], t.failures));
        }))),
  ];
}

function modelsPage(policy, targets) {
  const models = Object.entries(policy.models).sort(([a], [b]) => a.localeCompare(b));
  // a version is deployed when a target of it runs (model@version/local or /<replica>)
  const deployed = (model, version) => Object.entries(targets.targets)
    .filter(([key]) => key.startsWith(model + "@" + version + "/"));
  const state = (model, version) => {
    const t = deployed(model, version);
    if (!t.length) return ["not deployed", "muted"];
    return t.some(([, x]) => x.circuit.state === "closed") ? ["serving", "ok"] : ["down", "bad"];
  };
  return [
    el("h2", {}, "Models and versions"),
    el("p", { class: "muted" }, "policy ", policy.digest, " from ", policy.source || "memory",
      policy.last_error ? " — last reload refused: " + policy.last_error : ""),
    el("div", { class: "card" },
      el("table", { id: "models" },
        el("tr", {}, ["model", "versions", "state", "labels"].map((h) => el("th", {}, h))),
        models.map(([name, m]) => el("tr", { "data-model": name },
          el("td", {}, name),
          el("td", { "data-src": "policy", "data-path": JSON.stringify(["models", name, "versions"]) },
            m.versions.join(", ")),
          el("td", {}, m.versions.map((v) => {
            const [word, cls] = state(name, v);
            return el("span", { class: "badge " + cls, style: "margin-right:.3rem",
              "data-version-state": name + "@" + v }, v + ": " + word);
          })),
          el("td", {}, Object.entries(m.labels).map(([label, v]) =>
            el("span", { class: "badge", style: "margin-right:.3rem" }, label + " → ",
              el("span", { "data-src": "policy",
                "data-path": JSON.stringify(["models", name, "labels", label]) }, v)))))))),
  ];
}

function cachePage(c) {
  const row = (label, key, shown) => el("tr", {}, el("th", {}, label),
    el("td", { class: "num", "data-src": "cache", "data-path": JSON.stringify([key]) },
      shown === undefined ? fmt(c[key]) : shown));
  return [
    el("h2", {}, "Cache"),
    el("div", { class: "card" },
      el("table", { id: "cache" },
        el("tr", {}, el("th", {}, "store"), el("td", {}, c.store,
          c.available ? "" : el("span", { class: "badge bad" }, "unavailable"))),
        row("hit ratio", "hit_ratio"),
        row("hits", "hits"), row("misses", "misses"), row("errors", "errors"),
        row("coalesced misses", "coalesced"), row("entries", "entries"), row("bytes", "bytes"),
        row("max bytes", "max_bytes"))),
  ];
}

// --- experiment charts ------------------------------------------------------------------

const METRICS = [["error_rate", "error rate"], ["latency", "latency (ms)"], ["quality", "quality"]];

function forestPlot(exp) {
  // one panel per metric: each arm's difference vs control, fixed-sample 95% interval (thin)
  // and always-valid 95% interval (thick); zero dashed
  const panels = [];
  for (const [key, label] of METRICS) {
    const rows = exp.comparison.filter((c) => c[key]);
    if (!rows.length) continue;
    const lo = Math.min(0, ...rows.flatMap((c) => [c[key].difference_ci95[0],
      (c[key].always_valid.difference_ci95 || [0])[0]]).filter((v) => v !== null));
    const hi = Math.max(0, ...rows.flatMap((c) => [c[key].difference_ci95[1],
      (c[key].always_valid.difference_ci95 || [0, 0])[1]]).filter((v) => v !== null));
    const W = 360, left = 90, right = 20, rowH = 28, top = 26, H = top + rowH * rows.length + 24;
    const span = hi - lo || 1;
    const x = (v) => left + ((v - lo) / span) * (W - left - right);
    const svg = el("svg", { class: "chart forest", width: W, height: H, "data-metric": key,
      "data-experiment": exp.name },
      el("text", { x: 4, y: 14, class: "title" }, label + ": difference vs " + exp.control),
      el("line", { x1: x(0), x2: x(0), y1: top - 6, y2: H - 20, stroke: "#98a2b3",
        "stroke-dasharray": "4 3" }),
      el("text", { x: left, y: H - 6 }, fmt(+lo.toPrecision(3))),
      el("text", { x: W - right, y: H - 6, "text-anchor": "end" }, fmt(+hi.toPrecision(3))));
    rows.forEach((c, i) => {
      const d = c[key], y = top + rowH * i + rowH / 2;
      const colour = d.significant ? (d.difference > 0 ? "#c4320a" : "#12805c") : "#3446a8";
      const av = d.always_valid.difference_ci95;
      svg.append(
        el("text", { x: 4, y: y + 4 }, c.arm),
        el("line", { x1: x(d.difference_ci95[0]), x2: x(d.difference_ci95[1]), y1: y, y2: y,
          stroke: colour, "stroke-width": 1.5 }),
        av ? el("line", { x1: x(av[0]), x2: x(av[1]), y1: y, y2: y, stroke: colour,
          "stroke-width": 6, "stroke-opacity": 0.35, class: "always-valid" }) : null,
        el("circle", { cx: x(d.difference), cy: y, r: 4, fill: colour },
          el("title", {}, `${c.arm}: ${d.difference} (95% ${d.difference_ci95.join(" .. ")}; ` +
            `always valid ${av ? av.join(" .. ") : "–"})`)));
    });
    panels.push(svg);
  }
  return panels.length ? el("div", { class: "charts" }, panels)
    : el("p", { class: "muted" }, "No comparison yet (two units with data per arm needed).");
}

function exposureChart(exp) {
  const samples = exp.exposure || [];
  const arms = Object.keys(exp.arms);
  const W = 420, H = 170, left = 44, right = 10, top = 22, bottom = 22;
  const svg = el("svg", { class: "chart exposure", width: W, height: H, "data-experiment": exp.name },
    el("text", { x: 4, y: 14, class: "title" }, "exposure: distinct units per arm over time"));
  if (samples.length < 1) return svg;
  const t0 = samples[0].t, t1 = Math.max(samples[samples.length - 1].t, t0 + 1);
  const ymax = Math.max(1, ...samples.flatMap((s) => arms.map((a) => s.units[a] || 0)));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const y = (v) => H - bottom - (v / ymax) * (H - top - bottom);
  svg.append(el("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, stroke: "#d0d5dd" }),
    el("text", { x: left - 4, y: top + 4, "text-anchor": "end" }, String(ymax)),
    el("text", { x: left - 4, y: H - bottom, "text-anchor": "end" }, "0"),
    el("text", { x: W - right, y: H - 6, "text-anchor": "end" },
      Math.round(t1 - t0) + " s"));
  arms.forEach((a, i) => {
    const pts = samples.map((s) => `${x(s.t).toFixed(1)},${y(s.units[a] || 0).toFixed(1)}`);
    if (pts.length === 1) pts.push(pts[0].replace(/^[^,]+/, String(W - right)));
    svg.append(el("polyline", { points: pts.join(" "), fill: "none",
      stroke: ARM_COLOURS[i % ARM_COLOURS.length], "stroke-width": 2, "data-arm": a }),
      // a style, not the fill attribute: the stylesheet's text colour would win over that
      el("text", { x: left + 6 + 80 * i, y: H - 6,
        style: "fill:" + ARM_COLOURS[i % ARM_COLOURS.length] }, a));
  });
  return svg;
}

function experimentCard(exp, index, live) {
  const src = live ? "experiments" : "report";
  const base = live ? ["experiments", index] : [];
  const srm = exp.sample_ratio;
  const srmBadge = !srm ? el("span", { class: "badge muted", "data-srm": "none" }, "SRM: n/a")
    : el("span", { class: "badge " + (srm.mismatch ? "bad" : "ok"), "data-srm": String(srm.mismatch) },
      (srm.mismatch ? "sample ratio MISMATCH" : "sample ratio ok") + " (p = " + fmt(srm.p_value) + ")");
  const stateCls = exp.state === "running" ? "ok" : "warn";
  const control = exp.control;
  const armRows = Object.entries(exp.arms).map(([name, a]) => {
    const p = [...base, "arms", name];
    return el("tr", { "data-arm": name },
      el("td", {}, name, name === control ? el("span", { class: "muted" }, " (control)") : ""),
      el("td", {}, a.version),
      num(src, [...p, "weight"], a.weight),
      num(src, [...p, "units"], a.units),
      num(src, [...p, "assigned"], a.assigned),
      num(src, [...p, "requests"], a.requests),
      num(src, [...p, "error_rate"], a.error_rate),
      num(src, [...p, "latency_ms", "mean"], a.latency_ms.mean),
      num(src, [...p, "latency_ms", "p95"], a.latency_ms.p95),
      num(src, [...p, "quality", "mean"], a.quality.mean),
      el("td", {}, a.stopped
        ? el("span", { class: "badge bad", title: a.stopped.reason }, "stopped: " + a.stopped.reason)
        : el("span", { class: "badge ok" }, "serving")),
      live && name !== control && !a.stopped
        ? el("td", {}, el("button", { class: "danger", "data-stop": exp.name + "/" + name,
          onclick: () => act(`/admin/experiments/${encodeURIComponent(exp.name)}/stop?arm=${encodeURIComponent(name)}`) },
          "Stop"))
        : el("td", {}));
  });
  const cmpRows = exp.comparison.flatMap((c, ci) => METRICS.filter(([k]) => c[k]).map(([k, label]) => {
    const d = c[k], p = [...base, "comparison", ci, k];
    return el("tr", { "data-comparison": c.arm + "/" + k },
      el("td", {}, c.arm), el("td", {}, label),
      num(src, [...p, "difference"], d.difference),
      el("td", {}, d.difference_ci95.map(fmt).join(" .. ")),
      num(src, [...p, "p_value"], d.p_value),
      el("td", {}, (d.always_valid.difference_ci95 || []).map(fmt).join(" .. ")),
      num(src, [...p, "always_valid", "p_value"], d.always_valid.p_value),
      num(src, [...p, "p_value_holm"], d.p_value_holm),
      el("td", { "data-significant": String(d.significant) },
        d.significant ? el("span", { class: "badge " + (d.difference > 0 ? "warn" : "ok") }, "significant")
          : el("span", { class: "muted" }, "not yet")));
  }));
  const rails = exp.guardrails;
  return el("div", { class: "card experiment", "data-experiment": exp.name },
    el("h3", {}, exp.name, " ",
      el("span", { class: "badge " + stateCls, "data-state": exp.state }, exp.state), " ", srmBadge,
      live && Object.keys(rails.stopped || {}).length
        ? el("button", { class: "primary", style: "margin-left:1rem", "data-resume": exp.name,
          onclick: () => act(`/admin/experiments/${encodeURIComponent(exp.name)}/resume`) }, "Resume")
        : null),
    el("p", { class: "muted" }, "route ", exp.route, " · counters: ", exp.counters,
      " · guardrails: ", ["max_error_rate", "max_p95_ms", "min_samples"]
        .filter((k) => rails[k] !== null && rails[k] !== undefined).map((k) => k + " " + rails[k]).join(", ") || "none"),
    el("table", { class: "arms" },
      el("tr", {}, ["arm", "version", "weight", "units", "assigned", "requests", "error rate",
        "mean ms", "p95 ms", "quality", "state", ""].map((h) => el("th", {}, h))),
      armRows),
    el("div", { class: "charts", style: "margin-top:.8rem" }, exposureChart(exp)),
    el("h3", {}, "Difference vs control (dot; thin: fixed-sample 95%; thick: always-valid 95%)"),
    forestPlot(exp),
    el("table", { class: "comparison" },
      el("tr", {}, ["arm", "metric", "difference", "95% (fixed)", "p (fixed)", "95% (always valid)",
        "p (always valid)", "p (Holm)", "verdict"].map((h) => el("th", {}, h))),
      cmpRows),
    el("details", { class: "how" }, el("summary", {}, "How to read this"),
      el("ul", {}, (exp.how_to_read || []).map((line) => el("li", {}, line)))));
}

function experimentsPage(data) {
  if (!data.experiments.length) return [el("h2", {}, "Experiments"),
    el("p", { class: "muted" }, "The running policy has no experiments.")];
  return [el("h2", {}, "Experiments"), data.experiments.map((e, i) => experimentCard(e, i, true))];
}

async function act(path) {
  try {
    await api(path, "POST");
  } catch (e) {
    alert("Failed: " + e.message);
  }
  await refresh();
}

// --- refresh loop -----------------------------------------------------------------------

let refreshes = 0;

async function refresh() {
  const main = document.querySelector("main");
  const page = document.body.dataset.page;
  try {
    let content;
    if (page === "targets") content = targetsPage(await api(SOURCES.targets), await api(SOURCES.policy));
    else if (page === "models") content = modelsPage(await api(SOURCES.policy), await api(SOURCES.targets));
    else if (page === "cache") content = cachePage(await api(SOURCES.cache));
    else content = experimentsPage(await api(SOURCES.experiments));
    const open = new Set([...document.querySelectorAll("details[open]")].map((d) =>
      d.closest("[data-experiment]")?.dataset.experiment));
    main.replaceChildren(...[content].flat(2));
    document.querySelectorAll("details.how").forEach((d) => {
      if (open.has(d.closest("[data-experiment]")?.dataset.experiment)) d.open = true;
    });
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    document.getElementById("status").textContent =
      "live · updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e instanceof Unauthorised) {
      if (!document.getElementById("login")) showLogin(main, e.message);
    } else {
      document.getElementById("status").textContent = "update failed: " + e.message;
    }
  }
}

function start() {
  if (window.PRISM_REPORT) { // a saved report: one experiment, drawn once
    document.querySelector("main").replaceChildren(experimentCard(window.PRISM_REPORT, 0, false));
    document.body.dataset.refreshes = "1";
    return;
  }
  refresh();
  setInterval(() => { if (!document.getElementById("login")) refresh(); }, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
