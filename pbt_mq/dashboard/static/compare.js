// pbt-mq dashboard: experiments side by side (#/compare/A,B), what `pbt compare A B` prints and draws.
// Loaded before app.js, which builds it with its helpers: window.pbtCompare(lib) -> { open, close }.
"use strict";
window.pbtCompare = (lib) => {
  const { $, esc, fmt, fmtScore, getJSON, PALETTE, baseOptions, zoomable, D } = lib;
  const EVERY_MS = 2000;
  const view = { exps: [], charts: {}, timer: null, doc: null, error: null };

  function open(exps) {
    close();
    view.exps = exps;
    $("#compare").hidden = false;
    $("#compare-problem").hidden = true;
    load();
  }

  function close() {
    clearTimeout(view.timer);
    for (const c of Object.values(view.charts)) c.destroy();
    Object.assign(view, { exps: [], charts: {}, timer: null, doc: null, error: null });
    D.compareDoc = null;
    $("#compare").hidden = true;
    $("#compare-hparams").innerHTML = "";
  }

  async function load() {
    const exps = view.exps;
    try {
      const doc = await getJSON(`api/compare?${exps.map((e) => `exp=${encodeURIComponent(e)}`).join("&")}`);
      if (view.exps !== exps) return; // another view opened meanwhile
      view.doc = D.compareDoc = doc;
      view.error = null;
      render(doc);
      if (doc.catching_up || doc.experiments.some((e) => e.state === "running")) view.timer = setTimeout(load, EVERY_MS);
    } catch (err) {
      if (view.exps !== exps) return;
      view.error = String(err.message || err);
      $("#compare-problem").hidden = false;
      $("#compare-problem").textContent = view.error;
      if (!(err.status >= 400 && err.status < 500)) view.timer = setTimeout(load, EVERY_MS * 2); // a 4xx stays as said
    }
  }

  function render(doc) {
    const es = doc.experiments;
    const problem = $("#compare-problem");
    problem.hidden = !doc.problem;
    problem.textContent = doc.problem || "";
    const max = es[0] && es[0].mode === "max";
    const finals = es.map((e) => e.final).filter((v) => v !== null);
    const top = finals.length ? (max ? Math.max(...finals) : Math.min(...finals)) : null;
    const rows = [...es].sort((a, b) => (a.final === null) - (b.final === null) || (max ? b.final - a.final : a.final - b.final));
    $("#compare-metric").textContent = es.length ? `final ${es[0].metric} (${es[0].mode})` : "final";
    $("#compare-table tbody").innerHTML = rows.map((e) => `<tr data-compared="${esc(e.experiment)}">
      <td><span class="swatch" style-color="${colorOf(e.experiment)}"></span>${esc(e.experiment)}</td><td>${esc(e.name)}</td>
      <td><span class="badge ${esc(e.state)}">${esc(e.state)}</span></td><td class="num">${fmtScore(e.final)}</td>
      <td class="num">${e.final === null || top === null ? "-" : fmt(e.final - top)}</td><td>${esc(e.final_member || "-")}</td>
      <td class="num">${e.final_step}</td><td class="num">${e.wall_s.toFixed(1)} s</td></tr>`).join("");
    $("#compare-table tbody").querySelectorAll("[style-color]").forEach((el) => {
      Object.assign(el.style, { display: "inline-block", width: "9px", height: "9px", marginRight: "5px", borderRadius: "2px",
        background: el.getAttribute("style-color") });
    });
    const metric = es.length ? `${es[0].metric} (${es[0].mode})` : "";
    chart("step", "#compare-step", "step", metric, es.map((e) => series(e, e.by_step)));
    chart("time", "#compare-time", "seconds since launch", metric, es.map((e) => ({ ...series(e, e.by_time), stepped: "before" })));
    const names = [...new Set(es.flatMap((e) => e.schedule.flatMap((ph) => Object.keys(ph.hparams)
      .filter((k) => typeof ph.hparams[k] === "number"))))].sort().slice(0, 6);
    for (const name of names) {
      const sets = es.map((e) => ({ ...series(e, e.schedule.flatMap((ph) => [[ph.from_step, ph.hparams[name]], [ph.to_step, ph.hparams[name]]])) }));
      let box = $(`#compare-hparams [data-hparam="${CSS.escape(name)}"]`);
      if (!box) {
        box = document.createElement("div");
        box.dataset.hparam = name;
        box.innerHTML = `<h4>${esc(name)}</h4><div class="chart"><canvas></canvas><div class="zoom-box" hidden></div></div>`;
        $("#compare-hparams").appendChild(box);
      }
      chart(`hparam:${name}`, box.querySelector("canvas"), "step", name, sets);
    }
  }

  const colorOf = (exp) => PALETTE[Math.max(0, view.exps.indexOf(exp)) % PALETTE.length];

  function series(e, pairs) {
    return { label: e.experiment, data: pairs.map(([x, y]) => ({ x, y })), borderColor: colorOf(e.experiment),
      backgroundColor: colorOf(e.experiment), borderWidth: 2, pointRadius: 1.5 };
  }

  function chart(key, canvas, xTitle, yTitle, datasets) {
    const el = typeof canvas === "string" ? $(canvas) : canvas;
    const existing = view.charts[key];
    if (existing) { existing.data.datasets = datasets; existing.update("none"); return; }
    const opts = baseOptions(yTitle);
    opts.scales.x.title.text = xTitle;
    opts.plugins.legend = { display: true, position: "bottom", labels: { boxWidth: 10 } };
    opts.onClick = undefined;
    view.charts[key] = new Chart(el, { type: "line", data: { datasets }, options: opts });
    zoomable(view.charts[key], () => {});
  }

  return { open, close, view };
};
