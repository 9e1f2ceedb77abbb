// GRouter's dashboard: everything from this node's /v1/* with the admin token, which stays
// in sessionStorage (this tab only) and travels only in the Authorization header. A token in
// the URL fragment (#token=..., never sent to a server) is read once and removed from the
// location bar at once.
"use strict";
(function () {
  const KEY = "grouter.token";
  const $ = (id) => document.getElementById(id);
  const charts = {};
  let timer = null;

  // The fragment's token, read before anything else and wiped from the address bar.
  (function takeFragment() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (m) {
      try { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); } catch (e) { /* ignore */ }
      history.replaceState(null, "", location.pathname + location.search);
    }
  })();

  function token() { try { return sessionStorage.getItem(KEY); } catch (e) { return null; } }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
    }
    for (const c of children) if (c != null) e.append(c.nodeType ? c : String(c));
    return e;
  }

  function message(kind, text) {
    const m = $("message");
    if (!text) { m.hidden = true; m.textContent = ""; m.removeAttribute("data-kind"); return; }
    m.hidden = false; m.textContent = text; m.setAttribute("data-kind", kind); m.className = kind;
  }

  function showLogin(why) {
    $("main").hidden = true; $("login").hidden = false; $("logout").hidden = true;
    document.body.setAttribute("data-state", "login");
    if (why) message("error", why);
    $("token").focus();
  }

  class Refused extends Error {}

  async function api(path) {
    const resp = await fetch(path, { headers: { Authorization: "Bearer " + token() }, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
    if (resp.status === 401) throw new Refused("401");
    if (resp.status === 403) throw new Refused("403");
    if (!resp.ok) throw new Error(path + " answered " + resp.status);
    return resp.json();
  }

  async function refresh() {
    if (!token()) { showLogin(); return; }
    let status, sites, peers, policies, hist, health;
    try {
      [status, sites, peers, policies, hist] = await Promise.all(
        ["/v1/status", "/v1/sites", "/v1/peers", "/v1/policies", "/v1/history"].map(api));
      const h = await fetch("/healthz", { cache: "no-store", credentials: "omit" });
      health = { code: h.status, body: await h.json().catch(() => ({})) };
    } catch (e) {
      if (e instanceof Refused) {
        try { sessionStorage.removeItem(KEY); } catch (x) { /* ignore */ }
        stop();
        showLogin("The token was refused (" + e.message + "): this node does not accept it. Enter the admin token of this node.");
        return;
      }
      document.body.setAttribute("data-state", "unreachable");
      message("error", "This node cannot be reached (" + (e.message || e) + "). Showing the last data; retrying.");
      return;
    }
    $("login").hidden = true; $("main").hidden = false; $("logout").hidden = false;
    if (health.code === 503) {
      const why = health.body.status === "site_drained" ? "its site is drained by policy"
        : health.body.status === "no_healthy_gorouter" ? "no GoRouter of its site is healthy" : "it is draining (shutting down)";
      message("warn", "This node answers /healthz with 503: " + why + ". Load balancers send it no traffic.");
      document.body.setAttribute("data-health", health.body.status || "503");
    } else {
      message(null);
      document.body.setAttribute("data-health", "ok");
    }
    $("node").textContent = status.node_id + " · site " + status.site + " · sync " + status.sync;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    renderSites(sites, status, peers, policies);
    renderMatrix(sites);
    renderCharts(hist);
    renderEvents(hist);
    document.body.setAttribute("data-state", "ready");
    schedule(hist.interval_ms);
  }

  function schedule(ms) { stop(); timer = setTimeout(refresh, Math.max(1000, Math.min(ms || 5000, 5000))); }
  function stop() { if (timer) clearTimeout(timer); timer = null; }

  function renderSites(sites, status, peers, policies) {
    const box = $("sites"); box.replaceChildren();
    const pinned = {};
    for (const r of policies.routes || []) {
      const p = r.policy || {};
      for (const s of p.drained || []) (pinned[s] = pinned[s] || []).push("drained: " + r.host);
      if (p.regions && p.regions.length) (pinned["*"] = pinned["*"] || []).push(r.host + " → " + p.regions.join(","));
    }
    const linked = new Set((peers.peers || []).map((p) => p.node_id));
    for (const s of sites.sites || []) {
      const local = s.site === status.site;
      const card = el("article", { class: "card " + (s.healthy ? "healthy" : "unhealthy"), "data-site": s.site },
        el("h3", {}, s.site, local ? el("span", { class: "tag" }, "this site") : null,
          s.drained ? el("span", { class: "tag warn", "data-marker": "drained" }, "drained") : null),
        el("p", {}, (s.healthy ? "healthy" : "unhealthy") + (s.region ? " · region " + s.region : "") +
          " · " + s.routes + " routes" + (s.rtt_ms != null && !local ? " · " + s.rtt_ms.toFixed(1) + " ms" : "")),
        local ? el("p", {}, "sync: " + status.sync) : null);
      const ul = el("ul", { class: "nodes" });
      for (const n of s.nodes || []) {
        ul.append(el("li", { class: "node " + n.state, "data-node": n.node_id },
          n.node_id + " — " + n.state + (linked.has(n.node_id) ? " · linked" : "")));
      }
      card.append(ul);
      for (const p of pinned[s.site] || []) card.append(el("p", { class: "tag warn" }, p));
      box.append(card);
    }
    if (pinned["*"]) box.append(el("article", { class: "card" }, el("h3", {}, "Pinned routes"),
      el("ul", {}, ...pinned["*"].map((t) => el("li", { "data-marker": "pinned" }, t)))));
  }

  function renderMatrix(sites) {
    const names = (sites.sites || []).map((s) => s.site);
    const m = sites.rtt_matrix || {};
    const t = $("rtt"); t.replaceChildren();
    t.append(el("tr", {}, el("th", {}, "from \\ to"), ...names.map((n) => el("th", {}, n))));
    for (const a of names) {
      t.append(el("tr", {}, el("th", {}, a), ...names.map((b) => {
        const v = a === b ? 0 : (m[a] || {})[b];
        return el("td", { class: v == null ? "muted" : "" }, v == null ? "–" : Number(v).toFixed(1));
      })));
    }
  }

  // [xs, ...one array per series] from the samples, with `pick(sample) -> {name: value}`.
  function columns(samples, pick) {
    const names = new Set();
    const rows = samples.map((s) => { const r = pick(s); Object.keys(r).forEach((k) => names.add(k)); return r; });
    const series = [...names].sort();
    const data = [samples.map((s) => s.at_ms / 1000)];
    for (const n of series) data.push(rows.map((r) => (r[n] == null ? null : r[n])));
    return { series, data };
  }

  const COLORS = ["#2e7dd7", "#d7672e", "#2ea44f", "#a22ed7", "#d72e5b", "#8c8c1e", "#1e8c8c", "#555"];

  function chart(id, cols, unit) {
    const box = $(id);
    const width = Math.max(300, box.clientWidth || 600);
    const sig = cols.series.join("|");
    let c = charts[id];
    if (!c || c.sig !== sig) {
      if (c) c.plot.destroy();
      box.replaceChildren();
      const opts = {
        width, height: 200,
        scales: { x: { time: true } },
        axes: [{}, { label: unit, size: 60 }],
        series: [{}].concat(cols.series.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))),
        legend: { show: true },
      };
      c = charts[id] = { sig, plot: new uPlot(opts, cols.data, box) };
    } else {
      c.plot.setData(cols.data);
    }
    const points = cols.data.slice(1).reduce((n, ys) => n + ys.filter((y) => y != null).length, 0);
    box.setAttribute("data-points", String(points));
    box.setAttribute("data-series", sig);
  }

  function renderCharts(hist) {
    const s = hist.samples || [];
    const bySite = (f) => (x) => Object.fromEntries((x.sites || []).map((v) => [v.site, f(v)]));
    chart("chart-rps", columns(s, bySite((v) => v.requests_per_sec)), "req/s");
    chart("chart-err", columns(s, bySite((v) => (v.error_rate == null ? null : v.error_rate * 100))), "% 5xx");
    chart("chart-rtt", columns(s, (x) => Object.fromEntries((x.peers || []).map((p) => [p.node_id + " (" + p.site + ")", p.rtt_ms]))), "ms");
    chart("chart-routes", columns(s, bySite((v) => v.routes)), "routes");
  }

  function describe(e) {
    switch (e.kind) {
      case "sync": return "sync state " + (e.from ? e.from + " → " : "") + e.to;
      case "node": return "node " + e.node_id + " (" + e.site + ") " + (e.from ? e.from + " → " : "") + e.to;
      case "write": return e.action + " " + e.key + (e.summary ? " (" + e.summary + ")" : "") + " at " + e.node_id;
      default: return JSON.stringify(e);
    }
  }

  function renderEvents(hist) {
    const ol = $("events"); ol.replaceChildren();
    const evs = hist.events || [];
    if (!evs.length) ol.append(el("li", { class: "muted" }, "none in the last hour"));
    for (const e of evs) {
      ol.append(el("li", { class: "event " + e.kind, "data-kind": e.kind },
        el("time", {}, new Date(e.at_ms).toLocaleTimeString()), " ", describe(e)));
    }
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    try { sessionStorage.setItem(KEY, t); } catch (e) { /* ignore */ }
    $("token").value = "";
    message(null);
    refresh();
  });
  $("logout").addEventListener("click", () => {
    try { sessionStorage.removeItem(KEY); } catch (e) { /* ignore */ }
    stop();
    showLogin();
  });
  refresh();
})();
