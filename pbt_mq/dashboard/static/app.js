// pbt-mq dashboard: the experiments list (polled), one experiment live (server-sent events).
// Every chart is drawn from the lineage *nodes* (see pbt_mq/dashboard/follow.py): one per decided
// segment, with p = the node whose checkpoint it started from. Read-only; no external asset.
"use strict";
(() => {
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd"];
  const EXTINCT = "#c8ccd4";
  const LIST_EVERY_MS = 2000;
  // a failed segment, or one whose member was replaced: no score, no checkpoint; charts skip it
  const noScore = (n) => (n.x === "failed" || n.x === "replaced") && n.y === null;

  const D = window.pbtDashboard = {
    exp: null, snapshot: null, nodes: [], selected: null, source: null, frames: 0, error: null,
    experiments: [], charts: { score: null, hparams: {} }, drawnNodes: -1, drawnSelection: null,
    picked: new Set(), compareDoc: null, // experiments ticked for comparison; what the compare view shows
    frameBytes: 0, maxFrameBytes: 0, // the size of the stream's updates (a large population's stay bounded)
    // for tools and tests: what the score chart holds, per member (points with a score)
    scorePoints() {
      const out = {};
      const chart = this.charts.score;
      if (!chart) return out;
      for (const ds of chart.data.datasets) {
        if (ds.pbtMember) out[ds.pbtMember] = ds.data.filter((p) => p.y !== null).length;
      }
      return out;
    },
    exploitMarkers() {
      const chart = this.charts.score;
      const ds = chart && chart.data.datasets.find((d) => d.pbtRole === "exploits");
      return ds ? ds.data.length : 0;
    },
  };

  // ------------------------------------------------------------------ helpers
  const $ = (sel) => document.querySelector(sel);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const fmt = (v) => {
    if (v === null || v === undefined) return "-";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : Number(v.toPrecision(4)).toString();
    return String(v);
  };
  const fmtScore = (v) => (v === null || v === undefined ? "-" : Number(v.toPrecision(6)).toString());
  const ago = (s) => {
    if (s === null || s === undefined) return "-";
    if (s < 60) return `${s.toFixed(0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  };
  const setHTML = (el, html) => { // unchanged tables are left alone: no flicker, hover and clicks survive
    if (el.pbtHTML !== html) { el.innerHTML = html; el.pbtHTML = html; return true; }
    return false;
  };
  const badge = (state) => `<span class="badge ${esc(state)}">${esc(state)}</span>`;
  const bar = (frac) => (frac === null || frac === undefined ? "-"
    : `<span class="bar" title="${(frac * 100).toFixed(0)} %"><span style-width="${frac}"></span></span> ${(frac * 100).toFixed(0)} %`);
  const applyBars = (root) => root.querySelectorAll("[style-width]").forEach((el) => {
    el.style.width = `${Math.max(0, Math.min(1, Number(el.getAttribute("style-width")))) * 100}%`; // CSSOM: allowed by the CSP
  });
  const colorOf = (member) => {
    const ids = memberIds();
    const i = ids.indexOf(member);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  };
  const memberIds = () => (D.snapshot ? D.snapshot.members.map((m) => m.id) : []);
  const numeric = (name, v) => {
    const sp = D.snapshot && D.snapshot.hparam_spaces[name];
    if (sp && sp.type === "categorical") { const i = sp.values.findIndex((x) => x === v); return i < 0 ? null : i; }
    return typeof v === "number" ? v : null;
  };

  function setConn(text, live) {
    const el = $("#conn");
    el.textContent = text;
    el.className = `conn ${live ? "live" : "down"}`;
  }

  // One banner, from every source of trouble at once, so a list refresh that worked never wipes what
  // the experiment's stream said (and the reverse).
  function banner() {
    const text = [D.listError, D.streamError, D.error ? `${D.error} (showing the last data read)` : ""].filter(Boolean).join(" · ");
    const el = $("#banner");
    el.hidden = !text;
    el.textContent = text || "";
  }

  async function getJSON(path) {
    const res = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (res.status === 401) throw new Error("this dashboard needs its token: open it once as /?token=YOUR_TOKEN");
    const body = await res.json();
    if (!res.ok) throw Object.assign(new Error(body.error || `HTTP ${res.status}`), { status: res.status });
    return body;
  }

  // ------------------------------------------------------------------ the experiments list
  async function loadExperiments() {
    try {
      const doc = await getJSON("api/experiments");
      D.experiments = doc.experiments;
      D.listed = true;
      $("#redis").textContent = `Redis ${doc.redis}`;
      if (!D.source) setConn("live", true);
      renderExperiments();
      if (!D.exp && !location.hash && D.experiments.length) {
        const running = D.experiments.find((e) => e.state === "running");
        location.hash = `#/${encodeURIComponent((running || D.experiments[0]).experiment)}`;
      }
      D.listError = null;
      D.listLoads = (D.listLoads || 0) + 1; // for tests: list refreshes that worked
      banner();
    } catch (err) {
      setConn("no answer", false);
      D.listError = String(err.message || err);
      banner();
    }
  }

  function renderExperiments() {
    const body = $("#experiments tbody");
    $("#no-experiments").hidden = !D.listed || D.experiments.length > 0; // not before the first answer
    const html = D.experiments.map((row) => {
      // the open experiment's row shows what its page shows: one source for progress and counts
      const s = row.experiment === D.exp && D.snapshot ? D.snapshot : null;
      const e = s ? { ...row, progress: s.progress, finished: s.finished, state: s.state || row.state } : row;
      const best = e.best ? `${esc(e.best.member)} ${esc(e.metric)}=${fmtScore(e.best.score)}` : "-";
      const age = e.state === "running" ? `${ago(e.age_s)} ago`
        : `${ago(e.age_s)} ago, ran ${ago(((e.done_ms || 0) - (e.created_ms || 0)) / 1000)}`;
      return `<tr data-experiment="${esc(e.experiment)}" class="${e.experiment === D.exp ? "selected" : ""}">
        <td><input type="checkbox" class="pick" data-pick="${esc(e.experiment)}" title="tick two or more to compare them"${D.picked.has(e.experiment) ? " checked" : ""}></td>
        <td>${esc(e.experiment)}</td><td>${badge(e.state)}${e.reason ? ` <span class="muted reason" title="${esc(e.reason)}">${esc(e.reason)}</span>` : ""}</td>
        <td>${best}</td><td>${bar(e.progress)}</td><td class="num">${e.finished}/${e.population}</td><td>${age}</td></tr>`;
    }).join("");
    if (setHTML(body, html)) applyBars(body);
  }

  // ------------------------------------------------------------------ one experiment, live
  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] === "compare") { // #/compare/A,B: a shareable comparison
      if (D.source) { D.source.close(); D.source = null; }
      Object.assign(D, { exp: null, snapshot: null, error: null, streamError: null });
      banner();
      $("#detail").hidden = true;
      compareView.open((parts[1] || "").split(",").filter(Boolean));
      renderExperiments();
      return;
    }
    if (compareView.view.exps.length) compareView.close();
    const exp = parts[0] || null;
    if (exp && exp !== D.exp) open(exp);
    const member = parts[1] || null;
    if (member !== D.selected) { D.selected = member; draw(); }
  }

  function open(exp) {
    if (D.source) D.source.close();
    Object.assign(D, { exp, snapshot: null, nodes: [], frames: 0, drawnNodes: -1, error: null, streamError: null });
    for (const c of [D.charts.score, ...Object.values(D.charts.hparams)]) if (c) c.destroy();
    D.charts = { score: null, hparams: {} };
    $("#hparam-charts").innerHTML = "";
    delete $("#score-log").dataset.touched; // the next experiment's metric decides its scale again
    $("#score-reset").hidden = true;
    $("#detail").hidden = true;
    renderExperiments();
    connect(exp);
  }

  // Follow the experiment's stream from the nodes we hold. The browser reconnects by itself after
  // a dropped connection (Last-Event-ID); after a refused one (e.g. 503) we try again ourselves.
  function connect(exp) {
    const source = D.source = new EventSource(`api/experiments/${encodeURIComponent(exp)}/stream?since=${D.nodes.length}`);
    source.addEventListener("frame", (ev) => {
      D.frameBytes = ev.data.length;
      D.maxFrameBytes = Math.max(D.maxFrameBytes, D.frameBytes);
      onFrame(JSON.parse(ev.data));
    });
    source.onopen = () => setConn("live", true);
    source.onerror = () => {
      setConn("reconnecting…", false);
      if (source.readyState !== EventSource.CLOSED) return;
      getJSON(`api/experiments/${encodeURIComponent(exp)}`)
        .then(() => setTimeout(() => { if (D.source === source) connect(exp); }, 3000))
        .catch((err) => { if (D.source === source) { D.streamError = `${exp}: ${err.message || err}`; banner(); } });
    };
  }

  function onFrame(f) {
    if (f.snapshot.large) { // a large population: its snapshot holds the nodes drawn (the best members')
      D.nodes = f.snapshot.large.nodes;
      D.drawnNodes = -1;
    } else {
      if (f.from !== D.nodes.length) D.nodes.length = Math.min(D.nodes.length, f.from); // never happens; keeps ids = indices
      for (const n of f.nodes) D.nodes.push(n);
    }
    D.snapshot = f.snapshot;
    D.error = f.error;
    D.frames += 1;
    D.streamError = null;
    banner();
    setConn(`live · updated ${new Date(f.snapshot.updated_ms).toLocaleTimeString()}`, !f.error);
    if (!D.pending) { D.pending = true; requestAnimationFrame(() => { D.pending = false; draw(); }); }
  }

  function draw() {
    if (!D.snapshot) return;
    $("#detail").hidden = false;
    const focus = D.selected || (D.snapshot.best && D.snapshot.best.member) || null;
    document.querySelectorAll(".sel-name").forEach((el) => {
      el.textContent = focus ? `${focus}${D.selected ? "" : " (the best member)"}` : "the best member";
    });
    renderSummary();
    renderExperiments();
    renderMembers();
    renderWorkers();
    if (D.drawnNodes !== D.nodes.length || D.drawnSelection !== focus) {
      const model = buildModel(focus);
      renderScore(model);
      renderHparams(model);
      renderLineage(model);
      D.drawnNodes = D.nodes.length;
      D.drawnSelection = focus;
    }
  }

  function renderSummary() {
    const s = D.snapshot;
    const counts = s.counts || {};
    const a = s.actions || {};
    const best = s.best ? `<b>${esc(s.best.member)}</b> ${esc(s.metric)} = <b>${fmtScore(s.best.score)}</b> at step ${s.best.step}` : "no score yet";
    const rate = (v) => (v === null || v === undefined ? "-" : v.toFixed(1));
    $("#summary").innerHTML = `
      <div class="line"><span class="title">${esc(s.experiment)}</span>${badge(s.state)}
        ${s.reason ? `<span class="muted">${esc(s.reason)}</span>` : ""}
        <span class="kv">${esc(s.metric)} (${esc(s.mode)})</span>
        <span class="kv">exploit ${esc(s.exploit_rule)}, explore ${esc(s.explore_rule)}</span>
        <span class="kv">elapsed <b>${ago(s.elapsed_s)}</b></span>
        <span class="kv">progress ${bar(s.progress)}</span></div>
      <div class="line"><span class="kv">best: ${best}</span>
        <span class="kv">members ${s.population}: ${Object.entries(counts).sort().map(([k, v]) => `${esc(k)} ${v}`).join(", ")}</span>
        <span class="kv">decisions <b>${s.decisions}</b> (exploit ${a.exploit || 0}, continue ${a.continue || 0}, done ${a.done || 0}${a.failed ? `, failed ${a.failed}` : ""}${a.replaced ? `, replaced ${a.replaced}` : ""})</span>
        <span class="kv">events/s <b>${rate(s.events_per_s)}</b></span>
        <span class="kv">decisions/s <b>${rate(s.decisions_per_s)}</b></span>
        ${s.catching_up ? '<span class="kv muted">reading the lineage…</span>' : ""}</div>
      ${s.tracking_problem ? `<div class="line problem" id="tracking-problem">tracking: ${esc(s.tracking_problem)}</div>` : ""}`;
    applyBars($("#summary"));
    $("#metric-head").textContent = s.metric;
  }

  function exploitText(last) {
    if (!last) return "-";
    const moved = last.step === last.parent_step ? "" : ` (was at step ${last.step})`;
    return `from ${esc(last.parent)} at step ${last.parent_step}${moved}`;
  }

  function renderMembers() {
    const s = D.snapshot;
    const best = s.best && s.best.member;
    const focus = D.selected || best;
    const html = s.members.map((m) => {
      const hp = Object.keys(m.hparams).sort().map((k) => `${esc(k)}=${esc(fmt(m.hparams[k]))}`).join(" ");
      const worker = m.worker ? `${esc(m.worker)}${m.flag ? ` <span class="flag">(${esc(m.worker_health.toUpperCase())})</span>` : ""}` : "-";
      const err = m.error ? ` title="${esc(m.error.slice(-400))}"` : "";
      return `<tr data-member="${esc(m.id)}" class="${m.id === focus ? "selected" : ""}"${err}>
        <td><span class="swatch" data-color="${colorOf(m.id)}"></span>${esc(m.id)}${m.id === best ? " ★" : ""}</td>
        <td>${badge(m.state)}</td><td class="num">${m.step}</td><td class="num">${fmtScore(m.score)}</td>
        <td class="hp">${hp}</td><td>${worker}</td><td>${exploitText(m.last_exploit)}</td></tr>`;
    }).join("");
    const note = $("#members-note");
    note.hidden = !s.large;
    if (s.large) note.textContent = `${s.members.length} of ${s.population} members listed: the best by ${s.metric}, then any failing; the charts show every segment as bands and the best ${s.large.top.length} as lines, whose ancestry a click traces. Every member: pbt status ${s.experiment} --json`;
    if (!setHTML($("#members tbody"), html)) return;
    $("#members tbody").querySelectorAll(".swatch").forEach((el) => {
      Object.assign(el.style, { display: "inline-block", width: "9px", height: "9px", marginRight: "5px", borderRadius: "2px", background: el.dataset.color });
    });
  }

  function renderWorkers() {
    const ws = D.snapshot.workers || [];
    $("#no-workers").hidden = ws.length > 0;
    setHTML($("#workers tbody"), ws.map((w) => `<tr data-worker="${esc(w.id)}"><td>${esc(w.id)}</td><td>${badge(w.health)}</td>
      <td>${w.age_s.toFixed(1)} s ago</td><td>${esc(w.device || "-")}</td><td>${esc(w.current || "-")}</td>
      <td class="num">${esc(w.segments || "-")}</td><td>${esc(w.warm || "-")}/${esc(w.cached || "-")}/${esc(w.cold || "-")}</td></tr>`).join(""));
  }

  // ------------------------------------------------------------------ the model every chart draws
  function buildModel(focus) {
    const nodes = D.nodes;
    const large = D.snapshot.large || null;
    const index = large ? new Map(nodes.map((n) => [n.i, n])) : null;
    const at = (i) => (i < 0 ? null : (index ? index.get(i) : nodes[i]) || null); // a large population holds a subset
    const byMember = new Map();
    for (const n of nodes) {
      if (!byMember.has(n.m)) byMember.set(n.m, []);
      byMember.get(n.m).push(n);
    }
    const chainOf = (member) => {
      const own = byMember.get(member) || [];
      let cur = [...own].reverse().find((n) => !noScore(n));
      const chain = [];
      const seen = new Set();
      while (cur && !seen.has(cur.i)) { seen.add(cur.i); chain.push(cur); cur = at(cur.p); }
      return chain.reverse();
    };
    const surviving = new Set();
    for (const m of byMember.keys()) for (const n of chainOf(m)) surviving.add(n.i);
    const maxStep = nodes.reduce((acc, n) => Math.max(acc, n.b), D.snapshot.stop_steps || 1);
    const lines = large ? large.top : [...byMember.keys()].sort(); // the members drawn as lines
    return { nodes, at, large, lines, byMember, focus, chain: focus ? chainOf(focus) : [], surviving, maxStep };
  }

  // A member's score curve: each segment drawn from the state it started from (after an exploit,
  // the donor's point), with a gap where the member jumped.
  function scoreSeries(model, member) {
    const out = [];
    let prev = null;
    for (const n of model.byMember.get(member) || []) {
      if (noScore(n)) continue;
      if (n.p >= 0 && (!prev || n.p !== prev.i)) {
        if (prev) out.push({ x: prev.b, y: null });
        const src = model.at(n.p);
        if (src && src.y !== null) out.push({ x: n.a, y: src.y, start: true });
      }
      out.push({ x: n.b, y: n.y });
      prev = n;
    }
    return out;
  }

  // A member's hyperparameter as a step function of the step, with the same gaps.
  function schedule(model, member, name) {
    const out = [];
    let prev = null;
    for (const n of model.byMember.get(member) || []) {
      if (noScore(n)) continue;
      const v = numeric(name, (n.h || {})[name] ?? null);
      if (prev && n.p !== prev.i) out.push({ x: prev.b, y: null });
      out.push({ x: n.a, y: v }, { x: n.b, y: v });
      prev = n;
    }
    return out;
  }

  const lineStyle = (member, focus) => {
    const dim = focus && member !== focus;
    return { borderColor: colorOf(member) + (dim ? "80" : ""), backgroundColor: colorOf(member), borderWidth: member === focus ? 2.5 : 1.3 };
  };

  function baseOptions(yTitle, yType) {
    return {
      animation: false, responsive: true, maintainAspectRatio: false, normalized: true, spanGaps: false,
      interaction: { mode: "nearest", intersect: false, axis: "xy" },
      elements: { point: { radius: 0, hitRadius: 4 }, line: { tension: 0 } },
      scales: { x: { type: "linear", title: { display: true, text: "step" }, min: 0 },
        y: { type: yType || "linear", title: { display: !!yTitle, text: yTitle } } },
      plugins: { legend: { display: false }, tooltip: { callbacks: {} } },
      onClick: (ev, els, chart) => {
        const ds = els.length ? chart.data.datasets[els[0].datasetIndex] : null;
        if (ds && ds.pbtMember) select(ds.pbtMember);
      },
    };
  }

  // Zoom: drag a box on a chart to show only that range (x and y); double-click or "reset zoom" shows
  // everything again. The range is kept in the chart's options, so live updates keep it.
  function zoomable(chart, onChange) {
    const canvas = chart.canvas;
    Object.assign(canvas, { pbtChart: chart, pbtOnChange: onChange }); // a canvas is reused by the next experiment's chart
    if (canvas.pbtZoomable) return;
    canvas.pbtZoomable = true;
    const box = canvas.parentElement.querySelector(".zoom-box");
    let from = null;
    const at = (ev) => { const r = canvas.getBoundingClientRect(); return { x: ev.clientX - r.left, y: ev.clientY - r.top }; };
    let pan = null; // shift-drag on a zoomed chart moves the range
    canvas.addEventListener("mousedown", (ev) => {
      const c = canvas.pbtChart;
      if (ev.shiftKey && c.pbtZoomed) { pan = { px: at(ev) }; } else { from = at(ev); }
      D.dragEnd = end; // the one window listener below ends this drag, whichever canvas it began on
    });
    canvas.addEventListener("mousemove", (ev) => {
      if (pan) {
        const c = canvas.pbtChart, to = at(ev), { x, y } = c.scales, sx = c.options.scales.x, sy = c.options.scales.y;
        const dx = x.getValueForPixel(pan.px.x) - x.getValueForPixel(to.x), dy = y.getValueForPixel(pan.px.y) - y.getValueForPixel(to.y);
        if (y.type === "logarithmic") { const k = y.getValueForPixel(pan.px.y) / y.getValueForPixel(to.y); sy.min *= k; sy.max *= k; }
        else { sy.min += dy; sy.max += dy; }
        sx.min += dx; sx.max += dx;
        pan.px = to;
        c.update("none");
        return;
      }
      if (!from || !box) return;
      const to = at(ev);
      Object.assign(box.style, { left: `${Math.min(from.x, to.x)}px`, top: `${Math.min(from.y, to.y)}px`,
        width: `${Math.abs(to.x - from.x)}px`, height: `${Math.abs(to.y - from.y)}px` });
      box.hidden = false;
    });
    function end(ev) {
      if (pan) { pan = null; return; }
      if (!from) return;
      const to = at(ev);
      const start = from;
      from = null;
      if (box) box.hidden = true;
      if (Math.abs(to.x - start.x) < 6 || Math.abs(to.y - start.y) < 6) return; // a click, not a drag
      const { x, y } = canvas.pbtChart.scales;
      zoomTo(canvas.pbtChart, [x.getValueForPixel(start.x), x.getValueForPixel(to.x)], [y.getValueForPixel(start.y), y.getValueForPixel(to.y)]);
      canvas.pbtOnChange();
    }
    canvas.addEventListener("dblclick", () => { zoomTo(canvas.pbtChart, null, null); canvas.pbtOnChange(); });
  }

  function zoomTo(chart, xs, ys) {
    const sx = chart.options.scales.x, sy = chart.options.scales.y;
    chart.pbtZoomed = !!xs;
    if (!chart.pbtHome) chart.pbtHome = { xmin: sx.min, xmax: sx.max, ymin: sy.min, ymax: sy.max };
    const home = chart.pbtHome;
    sx.min = xs ? Math.min(...xs) : home.xmin; sx.max = xs ? Math.max(...xs) : home.xmax;
    sy.min = ys ? Math.min(...ys) : home.ymin; sy.max = ys ? Math.max(...ys) : home.ymax;
    chart.update("none");
  }

  // Optional smoothing of the members' score curves: an exponential moving average along each
  // continuous run of a curve (restarted after an exploit's jump), as TensorBoard's slider does.
  function smooth(datasets, weight) {
    if (!weight) return;
    for (const d of datasets) {
      if (!d.pbtMember) continue;
      let last = null;
      d.data = d.data.map((p) => {
        if (p.y === null || p.start) { last = p.y; return p; }
        last = last === null ? p.y : weight * last + (1 - weight) * p.y;
        return { ...p, y: last, raw: p.y };
      });
    }
  }

  // The score axis: logarithmic when the user ticks it, or by default when the scores are positive and
  // span more than two decades (a loss), linear otherwise.
  function scoreScale(datasets) {
    const box = $("#score-log");
    if (!box.dataset.touched) {
      let lo = Infinity, hi = -Infinity; // a loop: a long run has more points than a call takes arguments
      for (const d of datasets) for (const p of d.data) if (typeof p.y === "number") { lo = Math.min(lo, p.y); hi = Math.max(hi, p.y); }
      box.checked = hi >= lo && lo > 0 && hi / lo > 100;
    }
    return box.checked ? "logarithmic" : "linear";
  }

  // A large population's bands: 10-90 % and 25-75 % of every segment that ended at a step, and the median.
  function bandSets(steps, q) {
    const pts = (k) => steps.map((x, i) => ({ x, y: q[k][i] }));
    const fill = (k, color, to) => ({ label: k, pbtRole: "band", order: 10, data: pts(k), borderWidth: 0, pointRadius: 0,
      backgroundColor: color, fill: to, borderColor: "transparent" });
    return [fill("p10", "rgba(31,119,180,0.12)", false), fill("p90", "rgba(31,119,180,0.12)", "-1"),
      fill("p25", "rgba(31,119,180,0.22)", false), fill("p75", "rgba(31,119,180,0.22)", "-1"),
      { label: "median", pbtRole: "band", order: 9, data: pts("p50"), borderColor: "#1f77b4", borderDash: [4, 3], borderWidth: 1.5, pointRadius: 0 }];
  }

  function renderScore(model) {
    const metric = D.snapshot.metric;
    const datasets = model.lines.map((m) => ({
      label: m, pbtMember: m, data: scoreSeries(model, m), ...lineStyle(m, model.focus),
      pointRadius: (ctx) => (ctx.raw && ctx.raw.start ? 0 : 1.6), // a dot per scored segment; none at a jump's start
    }));
    const marks = model.nodes.filter((n) => { const src = model.at(n.p); return src && src.m !== n.m && src.y !== null; })
      .map((n) => {
        const src = model.at(n.p);
        const decision = (model.byMember.get(n.m) || []).find((d) => d.q === n.q - 1);
        const ops = decision && decision.o && decision.o.length ? `; ${decision.o.join("; ")}` : "";
        const was = decision ? ` (it had ${fmtScore(decision.y)} at step ${decision.b})` : "";
        return { x: n.a, y: src.y, text: `${n.m} ← ${src.m}'s checkpoint at step ${n.a}${was}${ops}` };
      });
    datasets.push({ label: "exploit", pbtRole: "exploits", type: "scatter", order: -2, data: marks, pointStyle: "triangle",
      pointRadius: 5, pointHoverRadius: 7, borderColor: "#1d2330", backgroundColor: "#ffffff", borderWidth: 1.2, showLine: false });
    if (model.chain.length) {
      const pts = [];
      const first = model.chain[0];
      const from = model.at(first.p);
      if (from && from.y !== null) pts.push({ x: first.a, y: from.y });
      for (const n of model.chain) pts.push({ x: n.b, y: n.y });
      datasets.push({ label: `ancestry of ${model.focus}`, pbtRole: "ancestry", data: pts, borderColor: "#000", backgroundColor: "#000",
        borderWidth: 2.5, pointRadius: 0, borderDash: [], order: -1 }); // drawn over every member's line
    }
    smooth(datasets, Number($("#score-smooth").value));
    if (model.large) datasets.unshift(...bandSets(model.large.bands.steps, model.large.bands.score));
    let chart = D.charts.score;
    const yType = scoreScale(datasets);
    if (!chart) {
      const opts = baseOptions(`${metric} (${D.snapshot.mode})`, yType);
      // the legend hides and shows a member's line (click a line or a table row to trace its ancestry)
      opts.plugins.legend = { display: model.lines.length <= 16, position: "right", labels: { boxWidth: 10, filter: (item, data) => !!data.datasets[item.datasetIndex].pbtMember } };
      opts.plugins.tooltip.callbacks.label = (ctx) => (ctx.raw.text ? ctx.raw.text
        : `${ctx.dataset.label} step ${ctx.raw.x}: ${metric}=${fmtScore(ctx.raw.raw ?? ctx.raw.y)}${ctx.raw.raw !== undefined ? " (measured)" : ""}`);
      chart = D.charts.score = new Chart($("#score-chart"), { type: "line", data: { datasets }, options: opts });
      zoomable(chart, () => { $("#score-reset").hidden = !chart.pbtZoomed; });
    } else {
      const hidden = new Set(chart.data.datasets.filter((d, i) => d.pbtMember && !chart.isDatasetVisible(i)).map((d) => d.pbtMember));
      datasets.forEach((d) => { if (hidden.has(d.pbtMember)) d.hidden = true; }); // hidden in the legend: stays hidden
      chart.options.scales.y.type = yType;
      chart.data.datasets = datasets;
      chart.options.plugins.legend.display = model.lines.length <= 16;
      chart.update("none");
    }
    const total = Object.values(D.scorePoints()).reduce((x, y) => x + y, 0);
    $("#score-chart").dataset.points = String(total);
  }

  function renderHparams(model) {
    const spaces = D.snapshot.hparam_spaces || {};
    const box = $("#hparam-charts");
    for (const name of Object.keys(spaces).sort()) {
      const sp = spaces[name];
      const datasets = model.lines.map((m) => ({
        label: m, pbtMember: m, data: schedule(model, m, name), ...lineStyle(m, model.focus), pointRadius: 0,
      }));
      const hb = model.large && model.large.bands.hparams[name];
      if (hb) datasets.unshift(...bandSets(model.large.bands.steps, hb));
      if (model.chain.length) {
        const pts = [];
        for (const n of model.chain) { const v = numeric(name, (n.h || {})[name] ?? null); pts.push({ x: n.a, y: v }, { x: n.b, y: v }); }
        datasets.push({ label: `ancestry of ${model.focus}`, data: pts, borderColor: "#000", borderWidth: 2.5, pointRadius: 0, order: -1 });
      }
      let chart = D.charts.hparams[name];
      if (!chart) {
        const wrap = document.createElement("div");
        wrap.innerHTML = `<h4>${esc(name)} <span class="muted small">${sp.type}${sp.log ? ", log" : ""}</span></h4><div class="chart"><canvas></canvas><div class="zoom-box" hidden></div></div>`;
        box.appendChild(wrap);
        const opts = baseOptions("", sp.log ? "logarithmic" : "linear");
        if (sp.type === "categorical") {
          opts.scales.y.afterBuildTicks = (axis) => { axis.ticks = sp.values.map((_, i) => ({ value: i })); };
          opts.scales.y.ticks = { callback: (v) => (sp.values[v] !== undefined ? String(sp.values[v]) : "") };
          opts.scales.y.min = -0.3; opts.scales.y.max = sp.values.length - 0.7;
        } else if (!sp.log) { opts.scales.y.min = sp.low; opts.scales.y.max = sp.high; }
        opts.plugins.tooltip.callbacks.label = (ctx) => {
          const v = sp.type === "categorical" ? sp.values[ctx.raw.y] : fmt(ctx.raw.y);
          return `${ctx.dataset.label} step ${ctx.raw.x}: ${name}=${v}`;
        };
        chart = D.charts.hparams[name] = new Chart(wrap.querySelector("canvas"), { type: "line", data: { datasets }, options: opts });
        zoomable(chart, () => {});
      } else {
        chart.data.datasets = datasets;
        chart.update("none");
      }
    }
  }

  // ------------------------------------------------------------------ the lineage tree (SVG)
  function renderLineage(model) {
    const box = $("#lineage");
    // a large population: a lane per member drawn (the best, then the ancestors they copied)
    const members = model.large ? [...new Set([...model.large.top, ...model.nodes.map((n) => n.m)])] : memberIds();
    const lane = new Map(members.map((m, i) => [m, i]));
    const laneH = Math.max(10, Math.min(24, Math.floor(300 / Math.max(members.length, 1))));
    const left = 46;
    const width = Math.max(box.clientWidth - 4, 300);
    const height = members.length * laneH + 26;
    const x = (step) => left + ((width - left - 10) * step) / Math.max(model.maxStep, 1);
    const y = (m) => 6 + (lane.get(m) ?? 0) * laneH + laneH / 2;
    const best = D.snapshot.best && D.snapshot.best.member;
    const parts = [];
    members.forEach((m) => {
      parts.push(`<rect class="lane-hit" data-member="${esc(m)}" x="0" y="${y(m) - laneH / 2}" width="${width}" height="${laneH}"><title>${esc(m)}</title></rect>`);
      parts.push(`<text class="lane-label${m === best ? " best" : ""}" data-member="${esc(m)}" x="4" y="${y(m) + 3}">${esc(m)}${m === best ? " ★" : ""}</text>`);
    });
    // runs: consecutive segments of one member that continue each other, split where survival changes
    const last = new Map();
    const runs = [];
    for (const n of model.nodes) {
      if (noScore(n)) continue;
      const alive = model.surviving.has(n.i);
      const prev = last.get(n.m);
      const run = prev && prev.end === n.p && prev.alive === alive ? prev : null;
      if (run) { run.b = n.b; run.end = n.i; } else {
        const r = { m: n.m, a: n.a, b: n.b, end: n.i, alive, from: n.p };
        runs.push(r);
        last.set(n.m, r);
        const src = model.at(n.p);
        if (src && src.m !== n.m) {
          parts.push(`<line x1="${x(src.b)}" y1="${y(src.m)}" x2="${x(n.a)}" y2="${y(n.m)}" stroke="${alive ? colorOf(n.m) : EXTINCT}" stroke-width="1" marker-end="url(#arrow)"><title>${esc(n.m)} copies ${esc(src.m)} at step ${n.a}</title></line>`);
        }
      }
    }
    for (const r of runs) {
      parts.push(`<line x1="${x(r.a)}" y1="${y(r.m)}" x2="${x(r.b)}" y2="${y(r.m)}" stroke="${r.alive ? colorOf(r.m) : EXTINCT}" stroke-width="${r.alive ? 3 : 2}" stroke-linecap="round"/>`);
    }
    if (model.chain.length) {
      let d = "";
      model.chain.forEach((n, i) => {
        const src = model.at(n.p);
        if (i === 0 || !src) d += `M${x(n.a)},${y(n.m)}`;
        else d += `L${x(n.a)},${y(n.m)}`;
        d += `L${x(n.b)},${y(n.m)}`;
      });
      parts.push(`<path d="${d}" fill="none" stroke="#000" stroke-width="2"><title>ancestry of ${esc(model.focus)}</title></path>`);
    }
    const ticks = [];
    for (let k = 0; k <= 5; k++) {
      const step = Math.round((model.maxStep * k) / 5);
      ticks.push(`<text class="axis" x="${x(step)}" y="${height - 4}" text-anchor="middle">${step}</text>`);
    }
    box.innerHTML = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" data-runs="${runs.length}">
      <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="5" markerHeight="5" orient="auto-start-reverse">
      <path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>${parts.join("")}${ticks.join("")}</svg>`;
  }

  // ------------------------------------------------------------------ selection and wiring
  function select(member) {
    const next = member === D.selected ? null : member;
    location.hash = `#/${encodeURIComponent(D.exp)}${next ? `/${encodeURIComponent(next)}` : ""}`;
  }

  document.addEventListener("click", (ev) => {
    if (ev.target.matches(".pick")) { // a tick for comparison, not a click on the row
      const exp = ev.target.dataset.pick;
      if (ev.target.checked) D.picked.add(exp); else D.picked.delete(exp);
      $("#compare-picked").disabled = D.picked.size < 2;
      return;
    }
    const row = ev.target.closest("[data-experiment]");
    if (row) { location.hash = `#/${encodeURIComponent(row.dataset.experiment)}`; return; }
    const m = ev.target.closest("[data-member]");
    if (m && D.exp) select(m.dataset.member);
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("mouseup", (ev) => { const end = D.dragEnd; D.dragEnd = null; if (end) end(ev); });
  $("#score-smooth").addEventListener("change", () => { if (D.charts.score) { D.drawnNodes = -1; draw(); } });
  $("#score-log").addEventListener("change", (ev) => {
    ev.target.dataset.touched = "1";
    if (D.charts.score) { D.drawnNodes = -1; draw(); }
  });
  $("#compare-picked").addEventListener("click", () => {
    location.hash = `#/compare/${[...D.picked].map(encodeURIComponent).join(",")}`;
  });
  $("#score-reset").addEventListener("click", () => {
    if (D.charts.score) zoomTo(D.charts.score, null, null);
    $("#score-reset").hidden = true;
  });
  window.addEventListener("resize", () => { if (D.snapshot) renderLineage(buildModel(D.drawnSelection)); });

  const compareView = window.pbtCompare({ $, esc, fmt, fmtScore, getJSON, PALETTE, baseOptions, zoomable, D });
  route();
  loadExperiments();
  setInterval(loadExperiments, LIST_EVERY_MS);
})();
