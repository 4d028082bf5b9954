// The relay's debugger page: its own code, no library. Records arrive over Server-Sent Events
// from /debugger/stream; the charts are drawn in SVG from /debugger/series.
"use strict";
(function () {
  const MAX_ROWS = 500;
  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#events tbody");
  const events = new Map(); // messageId -> entry
  let destinations = [];
  let source = null;
  let paused = false;
  let skipped = 0;
  let selected = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    return node;
  }

  function eventName(body) {
    const n = body.type === "track" ? body.event : body.name;
    return typeof n === "string" ? n : "";
  }

  function filters() {
    return {
      type: $("f-type").value, event: $("f-event").value.trim(), user: $("f-user").value.trim(),
      writeKey: $("f-key").value.trim(), destination: $("f-destination").value, outcome: $("f-outcome").value,
      search: $("search").value.trim().toLowerCase(),
    };
  }

  // --- the stream ------------------------------------------------------------------------
  function connect() {
    if (source) source.close();
    const f = filters();
    const q = new URLSearchParams({ outcomes: "1" });
    for (const k of ["type", "event", "user", "writeKey", "destination"]) if (f[k]) q.set(k, f[k]);
    source = new EventSource("/debugger/stream?" + q.toString());
    source.onopen = () => { $("connection").textContent = "live"; $("connection").className = "conn live"; };
    source.onerror = () => { $("connection").textContent = "reconnecting…"; $("connection").className = "conn down"; };
    source.onmessage = (msg) => receive(JSON.parse(msg.data));
  }

  function receive(rec) {
    switch (rec.kind) {
      case "event": return added(rec.body.messageId, {
        kind: "event", body: rec.body, writeKey: rec.writeKey, receivedAt: rec.receivedAt, outcomes: {},
        plugins: rec.changed ? changedBy(rec.changed) : [] });
      case "refused": {
        const body = rec.body && typeof rec.body === "object" ? rec.body : { raw: rec.body };
        const id = rec.messageId || ("refused-" + Math.random().toString(36).slice(2));
        const plugin = /plugin ([^:]+):/.exec(rec.reason || "");
        return added(id, { kind: "refused", body, writeKey: rec.writeKey, receivedAt: rec.receivedAt, reason: rec.reason,
          outcomes: {}, plugins: plugin ? [{ action: "refused", plugin: plugin[1], reason: rec.reason }] : [] });
      }
      case "dropped": {
        const id = rec.messageId || ("dropped-" + Math.random().toString(36).slice(2));
        return added(id, { kind: "dropped", body: { type: rec.type, messageId: rec.messageId, event: rec.name, name: rec.name },
          writeKey: rec.writeKey, receivedAt: rec.receivedAt, outcomes: {},
          plugins: [{ action: "dropped", plugin: rec.plugin, reason: rec.reason }] });
      }
      case "outcome": return outcome(rec);
      case "lost": {
        $("lost").hidden = false;
        $("lost").textContent = rec.count + " records dropped for this page (it fell behind)";
        return;
      }
    }
  }

  // each plugin's own change when the relay could tell them apart, else the chain's as a whole
  function changedBy(c) {
    if (c.steps && c.steps.length) return c.steps.map((s) => ({ action: "changed", plugin: s.plugin, reason: changes(s) }));
    return [{ action: "changed", plugin: c.plugins.join(", "), reason: changes(c) }];
  }

  function changes(c) {
    const parts = [];
    for (const k of ["removed", "added", "changed"]) if (c[k] && c[k].length) parts.push(k + " " + c[k].join(", "));
    return parts.join("; ");
  }

  function added(id, entry) {
    if (paused) { skipped += 1; $("skipped").textContent = skipped + " skipped while paused"; return; }
    const old = events.get(id);
    if (old) { old.row.remove(); entry.outcomes = old.outcomes; }
    entry.id = id;
    entry.row = row(entry);
    events.set(id, entry);
    tbody.prepend(entry.row);
    while (tbody.rows.length > MAX_ROWS) {
      const last = tbody.rows[tbody.rows.length - 1];
      events.delete(last.dataset.messageId);
      last.remove();
    }
    refresh(entry);
  }

  function outcome(rec) {
    const entry = events.get(rec.messageId);
    if (!entry) return;
    const prev = entry.outcomes[rec.destination];
    entry.outcomes[rec.destination] = Object.assign({}, prev, rec);
    refresh(entry);
  }

  function state(entry) {
    if (entry.kind !== "event") return entry.kind;
    const dests = destinations.length ? destinations : Object.keys(entry.outcomes);
    const got = dests.map((d) => (entry.outcomes[d] || {}).outcome || "queued");
    if (got.includes("dead_lettered")) return "dead_lettered";
    if (got.includes("retrying")) return "retrying";
    if (got.length && got.every((o) => o === "delivered")) return "delivered";
    return "queued";
  }

  function row(entry) {
    const b = entry.body || {};
    const tr = el("tr", { class: "event", "data-message-id": entry.id },
      el("td", { class: "time" }, new Date((entry.receivedAt || 0) * 1000).toLocaleTimeString()),
      el("td", { class: "type" }, b.type || ""),
      el("td", { class: "name" }, eventName(b) || (entry.kind === "dropped" ? b.event || "" : "")),
      el("td", { class: "user" }, b.userId || b.anonymousId || ""),
      el("td", { class: "key" }, entry.writeKey || ""),
      el("td", { class: "outcome" }, el("span", { class: "badge" }, "")));
    tr.addEventListener("click", () => show(entry.id));
    return tr;
  }

  function refresh(entry) {
    const s = state(entry);
    entry.state = s;
    entry.row.className = "event outcome-" + s;
    const badge = entry.row.querySelector(".badge");
    badge.className = "badge " + s;
    badge.textContent = s.replace("_", "-");
    entry.row.hidden = !visible(entry, filters());
    if (selected === entry.id) show(entry.id);
  }

  function visible(entry, f) {
    const b = entry.body || {};
    if (f.type && b.type !== f.type) return false;
    if (f.event && eventName(b) !== f.event && b.event !== f.event) return false;
    if (f.user && b.userId !== f.user && b.anonymousId !== f.user) return false;
    if (f.writeKey && entry.writeKey !== f.writeKey && !entry.writeKey.startsWith(f.writeKey.slice(0, 4))) return false;
    if (f.destination && entry.kind === "event" && f.outcome && f.outcome !== "queued") {
      const o = entry.outcomes[f.destination];
      if (!o || o.outcome !== f.outcome) return false;
    } else if (f.outcome && entry.state !== f.outcome) return false;
    if (f.search && !JSON.stringify(b).toLowerCase().includes(f.search)) return false;
    return true;
  }

  // --- the detail ----------------------------------------------------------------------------
  function show(id) {
    const entry = events.get(id);
    if (!entry) return;
    if (selected && events.get(selected)) events.get(selected).row.classList.remove("selected");
    selected = id;
    entry.row.classList.add("selected");
    $("detail").hidden = false;
    const b = entry.body || {};
    $("detail-title").textContent = (b.type || entry.kind) + " " + (eventName(b) || "") + " · " + id;
    const outs = $("detail-outcomes");
    outs.replaceChildren();
    if (entry.kind === "refused") outs.append(el("li", { class: "refused" }, "refused at ingest: " + entry.reason));
    if (entry.kind === "dropped") outs.append(el("li", { class: "dropped" }, "dropped at ingest: not stored"));
    if (entry.kind === "event") {
      const names = new Set([...destinations, ...Object.keys(entry.outcomes)]);
      for (const d of names) {
        const o = entry.outcomes[d];
        outs.append(el("li", { "data-destination": d, class: o ? o.outcome : "queued" }, d + ": " + describe(o)));
      }
      if (!names.size) outs.append(el("li", {}, "no destination configured: kept in the queue"));
    }
    const plugins = $("detail-plugins");
    plugins.replaceChildren();
    for (const p of entry.plugins) plugins.append(el("li", { class: p.action }, p.action + " by " + (p.plugin || "?") + ": " + p.reason));
    if (!entry.plugins.length) plugins.append(el("li", {}, entry.kind === "event" ? "stored as received (after the ingest plugins)" : "none"));
    $("detail-json").replaceChildren(json(b, 0));
  }

  function describe(o) {
    if (!o) return "queued";
    const when = o.at ? " at " + new Date(o.at * 1000).toLocaleTimeString() : "";
    if (o.outcome === "delivered") return "delivered (status " + o.status + ", " + o.attempts + " attempt" + (o.attempts === 1 ? "" : "s") + when + ", " + o.seconds + " s)";
    if (o.outcome === "retrying") return "retrying (attempt " + o.attempts + ", last error: " + o.error + ")";
    if (o.outcome === "dead_lettered") return "dead-lettered: " + o.reason + when;
    return o.outcome;
  }

  function json(value, depth) {
    if (value === null || typeof value !== "object") {
      const cls = typeof value === "string" ? "s" : typeof value === "number" ? "n" : "b";
      return el("span", { class: cls }, JSON.stringify(value));
    }
    const isArray = Array.isArray(value);
    const keys = Object.keys(value);
    if (!keys.length) return el("span", {}, isArray ? "[]" : "{}");
    const box = el("details", {});
    if (depth < 2) box.open = true;
    box.append(el("summary", {}, isArray ? "[" + keys.length + "]" : "{" + keys.length + "}"));
    for (const k of keys) {
      box.append(el("div", { class: "row" }, isArray ? "" : el("span", { class: "k" }, JSON.stringify(k) + ": "), json(value[k], depth + 1)));
    }
    return box;
  }

  // --- charts ------------------------------------------------------------------------------------
  const COLOURS = ["#1a4f9c", "#1f8a3b", "#b7791f", "#805ad5", "#c53030", "#2c7a7b"];
  function draw(svg, lines, points) {
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const max = Math.max(1, ...lines.flatMap((l) => l.values.filter((v) => v != null)));
    for (const f of [0.5, 1]) {
      const g = document.createElementNS(ns, "line");
      g.setAttribute("class", "grid"); g.setAttribute("x1", 0); g.setAttribute("x2", 300);
      g.setAttribute("y1", 80 - 75 * f); g.setAttribute("y2", 80 - 75 * f); svg.append(g);
    }
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 2); label.setAttribute("y", 10); label.textContent = String(max); svg.append(label);
    lines.forEach((l, i) => {
      const pts = l.values.map((v, j) => v == null ? null : ((300 * j) / Math.max(1, points - 1)).toFixed(1) + "," + (80 - (75 * v) / max).toFixed(1)).filter(Boolean);
      const p = document.createElementNS(ns, "polyline");
      p.setAttribute("points", pts.join(" ")); p.setAttribute("fill", "none");
      p.setAttribute("stroke", COLOURS[i % COLOURS.length]); p.setAttribute("stroke-width", "1.2");
      p.setAttribute("data-series", l.name); svg.append(p);
    });
  }

  async function poll() {
    try {
      const resp = await fetch("/debugger/series", { credentials: "same-origin", cache: "no-store" });
      if (resp.ok) {
        const data = await resp.json();
        const names = data.destinations.map((d) => d.name);
        if (names.join() !== destinations.join()) {
          destinations = names;
          const sel = $("f-destination"), keep = sel.value;
          sel.replaceChildren(el("option", { value: "" }, "any"), ...names.map((n) => el("option", { value: n }, n)));
          sel.value = keep;
        }
        const s = data.samples, n = s.length;
        draw($("chart-received"), [{ name: "received", values: s.map((x) => x.received) }], n);
        draw($("chart-delivered"), names.map((d) => ({ name: d, values: s.map((x) => x.delivered[d] || 0) })), n);
        draw($("chart-depth"), [{ name: "depth", values: s.map((x) => x.depth) }], n);
        $("chart-legend").replaceChildren(...names.map((d, i) => el("span", { class: "c" + (i % COLOURS.length) }, " " + d)));
      }
    } catch (e) { /* the next poll tries again */ }
    setTimeout(poll, 1000);
  }

  // --- controls ------------------------------------------------------------------------------
  function refilter() { const f = filters(); for (const e of events.values()) e.row.hidden = !visible(e, f); }
  let timer = null;
  for (const id of ["f-type", "f-event", "f-user", "f-key", "f-destination"]) {
    $(id).addEventListener("input", () => { refilter(); clearTimeout(timer); timer = setTimeout(connect, 300); });
  }
  $("f-outcome").addEventListener("input", refilter);
  $("search").addEventListener("input", refilter);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    if (paused) { skipped = 0; $("skipped").textContent = "0 skipped while paused"; }
  });
  $("clear").addEventListener("click", () => { events.clear(); tbody.replaceChildren(); $("detail").hidden = true; selected = null; });
  $("close-detail").addEventListener("click", () => { $("detail").hidden = true; selected = null; });

  connect();
  poll();
})();
