// ackd dashboard: refreshes the overview and queue pages from their JSON
// endpoints and draws the charts as SVG. No dependencies; nothing is
// fetched but this origin.
"use strict";
(function () {
  const prefix = document.body.dataset.prefix || "/ui/";
  const NS = "http://www.w3.org/2000/svg";
  const REFRESH_MS = 3000;
  const RATES = [["pushed", "s1"], ["acked", "s2"], ["requeued", "s3"], ["dead_lettered", "s4"], ["promoted", "s5"]];

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
    if (s === null || s === undefined || s < 0) return "?";
    if (s < 60) return s.toFixed(1) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    if (s < 172800) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d";
  }

  // lineChart draws per-second rates of samples (one per interval
  // seconds): the series keys, each [field, class].
  function lineChart(box, samples, interval, keys) {
    if (!box) return;
    const W = box.clientWidth || 600, H = box.clientHeight || 140, L = 40, B = 18, T = 8;
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
  // sparkline draws one series of counts per interval seconds, scaled to
  // its own maximum, in a cell of the overview.
  function sparkline(counts, interval, cls, label) {
    const W = 56, H = 16;
    const top = Math.max(...counts, 0);
    const x = (i) => (i * W) / Math.max(counts.length - 1, 1);
    const y = (v) => H - 1 - (top > 0 ? (v / top) * (H - 2) : 0);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label + " per second, last minutes" });
    svg.append(el("title", {}, `${label}: up to ${fmt(top / interval)}/s`));
    svg.append(el("polyline", { class: cls, points: counts.map((c, i) => `${x(i).toFixed(1)},${y(c).toFixed(1)}`).join(" "), fill: "none", "stroke-width": 1.5, "data-points": counts.length }));
    const box = document.createElement("span");
    box.className = "spark";
    box.append(svg);
    return box;
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
    let sortKey = "queue", desc = false;
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
      ls.textContent = "Last scan " + (h.last_scan_ago_seconds < 0 ? "not yet" : secs(h.last_scan_ago_seconds) + " ago" + (h.scan_took ? " (took " + h.scan_took + ")" : ""));
      lineChart(document.getElementById("rates"), data.series, data.interval_seconds, RATES);
      barChart(document.getElementById("lag"), data.lag.bounds, data.lag.counts);

      const f = filter.value.trim().toLowerCase();
      let qs = data.queues.filter((q) => !f || q.queue.toLowerCase().includes(f));
      qs.sort((a, b) => {
        let x = a[sortKey], y = b[sortKey];
        if (x === null) x = -1;
        if (y === null) y = -1;
        const c = typeof x === "string" ? x.localeCompare(y) : x - y;
        return desc ? -c : c;
      });
      document.getElementById("qcount").textContent = qs.length === data.queues.length ? qs.length : `${qs.length} of ${data.queues.length}`;
      const body = document.createElement("tbody");
      for (const q of qs) {
        const tr = document.createElement("tr");
        tr.dataset.name = q.queue;
        const a = document.createElement("a");
        a.href = prefix + "q/" + encodeURIComponent(q.queue);
        a.textContent = q.queue;
        const td0 = document.createElement("td");
        td0.append(a);
        tr.append(td0);
        const oldest = q.oldest_ready_age_seconds !== null ? secs(q.oldest_ready_age_seconds) : q.ready > 0 ? "?" : "–";
        for (const [v, bad] of [[q.ready], [q.in_flight], [q.delayed], [q.dead, q.dead > 0], [oldest]]) {
          const td = document.createElement("td");
          td.className = "n" + (bad ? " bad" : "");
          td.textContent = v;
          tr.append(td);
        }
        for (const [k, cls, label] of [["pushed", "s1", "pushed"], ["acked", "s2", "acked"], ["requeued", "s3", "requeued"], ["dead_lettered", "s4", "dead-lettered"]]) {
          const td = document.createElement("td");
          td.className = "n rate";
          td.dataset.rate = k;
          td.append(document.createTextNode(fmt(q[k + "_per_second"])));
          if (q.spark) td.append(sparkline(q.spark[k], data.spark_interval_seconds, cls, label));
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
        td.colSpan = 11;
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
      desc = k === sortKey ? !desc : k !== "queue";
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
    // A long list refreshes less often: about 1 s per 100 queues, at
    // least every REFRESH_MS.
    const refresh = async () => {
      try { data = await getJSON("api/overview"); render(); } catch (e) { /* keep the last data */ }
      setTimeout(refresh, Math.max(REFRESH_MS, data.queues.length * 10));
    };
    setTimeout(refresh, Math.max(REFRESH_MS, data.queues.length * 10));
  }

  // Queue page: counts and the rate chart refresh; tables stay as served.
  function queue() {
    const counts = document.getElementById("counts");
    const q = counts.dataset.queue;
    const small = (d) => {
      for (const box of document.querySelectorAll("#rates .chart.small")) {
        lineChart(box, d.series, d.interval_seconds, [[box.dataset.key, box.dataset.cls]]);
      }
    };
    const c = dataOf();
    if (c) small(c);
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
        for (const e of document.querySelectorAll("#rates [data-r]")) e.textContent = fmt(d[e.dataset.r]) + "/s";
        small(d);
      } catch (e) { /* keep the last data */ }
    }, REFRESH_MS);
  }

  if (document.getElementById("queues")) overview();
  else if (document.getElementById("counts")) queue();
})();
