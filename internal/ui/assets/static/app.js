// ackd dashboard: refreshes the overview and queue pages from their JSON
// endpoints and draws the charts as SVG. No dependencies; nothing is
// fetched but this origin.
"use strict";
(function () {
  const prefix = document.body.dataset.prefix || "/ui/";
  const NS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 3000;

  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === 0) return "0";
    if (v < 10) return v.toFixed(2);
    return Math.round(v).toString();
  }
  function secs(s) {
    if (s < 0) return "?";
    if (s < 60) return s.toFixed(1) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    if (s < 172800) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d";
  }

  // lineChart draws per-second rates of samples (one per interval seconds).
  function lineChart(box, samples, interval) {
    if (!box) return;
    const W = box.clientWidth || 600, H = box.clientHeight || 140, L = 40, B = 18, T = 8;
    const keys = [["requeued", "s1"], ["dead_lettered", "s2"], ["promoted", "s3"]];
    let top = 0;
    for (const s of samples) for (const [k] of keys) top = Math.max(top, s[k] / interval);
    top = top > 0 ? niceCeil(top) : 1;
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "messages per second" });
    const x = (i) => L + (i * (W - L - 4)) / Math.max(samples.length - 1, 1);
    const y = (v) => H - B - (v / top) * (H - B - T);
    svg.append(el("line", { class: "axis", x1: L, x2: W, y1: H - B, y2: H - B }));
    svg.append(el("line", { class: "axis", x1: L, x2: W, y1: T, y2: T, "stroke-dasharray": "3 3" }));
    svg.append(el("text", { x: 2, y: T + 8 }, fmt(top) + "/s"));
    svg.append(el("text", { x: 2, y: H - B }, "0"));
    const span = Math.round(samples.length * interval / 60);
    svg.append(el("text", { x: L, y: H - 4 }, `−${span} min`));
    svg.append(el("text", { x: W - 4, y: H - 4, "text-anchor": "end" }, "now"));
    for (const [k, cls] of keys) {
      const pts = samples.map((s, i) => `${x(i).toFixed(1)},${y(s[k] / interval).toFixed(1)}`).join(" ");
      svg.append(el("polyline", { class: cls + " series", points: pts, fill: "none", "stroke-width": 2, "stroke-linejoin": "round", "data-points": samples.length }));
    }
    box.replaceChildren(svg);
  }
  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // barChart draws the lag histogram: one bar per bucket.
  function barChart(box, bounds, counts) {
    if (!box) return;
    const W = box.clientWidth || 600, H = box.clientHeight || 140, B = 18, T = 8;
    const top = Math.max(1, ...counts);
    const n = counts.length, bw = W / n;
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "redelivery lag" });
    svg.append(el("line", { class: "axis", x1: 0, x2: W, y1: H - B, y2: H - B }));
    counts.forEach((c, i) => {
      const h = (c / top) * (H - B - T);
      const label = i < bounds.length ? "≤ " + lagLabel(bounds[i]) : "> " + lagLabel(bounds[bounds.length - 1]);
      const r = el("rect", { class: "bar", x: i * bw + 2, y: H - B - h, width: bw - 4, height: Math.max(h, c > 0 ? 1 : 0) });
      r.append(el("title", {}, `${label}: ${c}`));
      svg.append(r);
      if (i % 3 === 0) svg.append(el("text", { x: i * bw + 2, y: H - 4 }, lagLabel(i < bounds.length ? bounds[i] : Infinity)));
    });
    box.replaceChildren(svg);
  }
  function lagLabel(s) {
    if (!isFinite(s)) return "∞";
    return s < 1 ? (s * 1000) + "ms" : s + "s";
  }

  async function getJSON(path) {
    const r = await fetch(prefix + path, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!r.ok) throw new Error(r.status);
    return r.json();
  }
  function dataOf() {
    const d = document.getElementById("data");
    return d ? JSON.parse(d.textContent) : null;
  }

  // Overview: health, charts and the queue table, sorted and filtered.
  function overview() {
    const table = document.getElementById("queues");
    const filter = document.getElementById("filter");
    let data = dataOf();
    let sortKey = "name", desc = false;
    const stored = new URLSearchParams(location.hash.slice(1));
    if (stored.get("q")) filter.value = stored.get("q");

    function render() {
      const h = data.health;
      const pill = (k, ok, warn, text) => {
        const p = document.querySelector(`[data-h="${k}"]`);
        p.className = "pill " + (ok ? "ok" : warn ? "warn" : "bad");
        p.textContent = text;
      };
      pill("redis_up", h.redis_up, false, "Redis " + (h.redis_up ? "up" : "down"));
      pill("subscribed", h.subscribed, false, "Subscription " + (h.subscribed ? "live" : "down"));
      pill("events_enabled", h.events_enabled, true, "Keyspace events " + (h.events_enabled ? "on" : h.events_checked ? "off" : "unknown"));
      const ls = document.querySelector('[data-h="last_scan"]');
      ls.textContent = "Last scan " + (h.last_scan_ago_s < 0 ? "not yet" : secs(h.last_scan_ago_s) + " ago" + (h.scan_took ? " (took " + h.scan_took + ")" : ""));
      lineChart(document.getElementById("rates"), data.series, data.interval_s);
      barChart(document.getElementById("lag"), data.lag.bounds, data.lag.counts);

      const f = filter.value.trim().toLowerCase();
      let qs = data.queues.filter((q) => !f || q.name.toLowerCase().includes(f));
      qs.sort((a, b) => {
        const x = a[sortKey], y = b[sortKey];
        const c = typeof x === "string" ? x.localeCompare(y) : x - y;
        return desc ? -c : c;
      });
      document.getElementById("qcount").textContent = qs.length === data.queues.length ? qs.length : `${qs.length} of ${data.queues.length}`;
      const body = document.createElement("tbody");
      for (const q of qs) {
        const tr = document.createElement("tr");
        tr.dataset.name = q.name;
        const a = document.createElement("a");
        a.href = prefix + "q/" + encodeURIComponent(q.name);
        a.textContent = q.name;
        const td0 = document.createElement("td");
        td0.append(a);
        tr.append(td0);
        for (const [v, bad] of [[q.ready], [q.in_flight], [q.delayed], [q.dead, q.dead > 0], [secs(q.oldest_ready_s)], [fmt(q.requeued_ps)], [fmt(q.dead_ps)]]) {
          const td = document.createElement("td");
          td.className = "n" + (bad ? " bad" : "");
          td.textContent = v;
          tr.append(td);
        }
        const st = document.createElement("td");
        const tag = document.createElement("span");
        tag.className = q.paused ? "tag warn" : "tag";
        tag.textContent = q.paused ? "paused" : "running";
        st.append(tag);
        tr.append(st);
        body.append(tr);
      }
      if (qs.length === 0) {
        const tr = document.createElement("tr");
        tr.className = "empty";
        const td = document.createElement("td");
        td.colSpan = 9;
        td.textContent = data.queues.length ? "No queue matches the filter." : "No queue yet: ackd lists a queue once its first sweep found messages in it.";
        tr.append(td);
        body.append(tr);
      }
      table.tBodies[0].replaceWith(body);
    }
    table.tHead.addEventListener("click", (e) => {
      const th = e.target.closest("th[data-sort]");
      if (!th) return;
      const k = th.dataset.sort;
      desc = k === sortKey ? !desc : k !== "name";
      sortKey = k;
      for (const t of table.tHead.querySelectorAll("th")) t.classList.remove("sorted", "desc");
      th.classList.add("sorted");
      if (desc) th.classList.add("desc");
      render();
    });
    filter.addEventListener("input", () => {
      history.replaceState(null, "", filter.value ? "#q=" + encodeURIComponent(filter.value) : location.pathname);
      render();
    });
    render();
    setInterval(async () => {
      try { data = await getJSON("api/overview"); render(); } catch (e) { /* keep the last data */ }
    }, REFRESH_MS);
  }

  // Queue page: counts and the rate chart refresh; tables stay as served.
  function queue() {
    const counts = document.getElementById("counts");
    const q = counts.dataset.queue;
    const c = dataOf();
    if (c) lineChart(document.getElementById("rates"), c.series, c.interval_s);
    const all = document.getElementById("check-all");
    if (all) all.addEventListener("change", () => {
      for (const c of document.querySelectorAll('#selected input[name="id"]')) c.checked = all.checked;
    });
    setInterval(async () => {
      try {
        const d = await getJSON("api/q/" + encodeURIComponent(q));
        for (const k of ["ready", "in_flight", "delayed", "dead"]) {
          const e = counts.querySelector(`[data-c="${k}"]`);
          if (e) e.textContent = d[k].toLocaleString("en-US");
        }
        lineChart(document.getElementById("rates"), d.series, d.interval_s);
      } catch (e) { /* keep the last data */ }
    }, REFRESH_MS);
  }

  if (document.getElementById("queues")) overview();
  else if (document.getElementById("counts")) queue();
})();
