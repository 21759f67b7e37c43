// The live view's one script (harness/web.py serves it): fetches /api/..., renders with textContent only (every
// ledger text is data, never markup), redraws when /events says the ledger or a running log changed.
"use strict";

const COLORS = {baseline: "#1f77b4", keep: "#2ca02c", confirm: "#17becf", discard: "#9a9a9a", repeat: "#9467bd",
                rerun: "#bcbd22", pruned: "#ff7f0e", crash: "#d62728", interrupted: "#8c564b", unverified: "#e377c2"};
const SHOWN_ROWS = 500;             // of the runs table: the newest matches; the count says how many match
const main = document.getElementById("main");
const state = {versions: null, night: null, table: null, filters: {key: "", host: "", status: "", seed: "", text: ""}};

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v == null ? "" : String(v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid != null) e.append(kid);      // strings become text nodes
  return e;
}
// plotly reads a few HTML tags in its labels: ledger text goes in as entities, so it shows as typed
const esc = s => String(s == null ? "" : s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const bpb = v => v == null ? "" : Number(v).toFixed(6);
const runLink = id => el("a", {href: "/run/" + encodeURIComponent(id), text: id});
const badge = s => el("span", {class: "status", style: `background:${COLORS[s] || "#555"}`, text: s});

async function getJSON(url) {
  const r = await fetch(url, {credentials: "same-origin", cache: "no-store"});
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

const put = (...kids) => main.replaceChildren(...kids.filter(k => k != null));

function kpi(label, value) { return el("div", {class: "kpi"}, el("b", {text: value}), label); }

// plotly.js (4.8 MB) is loaded by the pages that draw, once, while their data is fetched: the runs table never waits
let plotlyLoaded = null;
function needPlotly() {
  return plotlyLoaded ||= new Promise((ok, fail) => {
    const s = el("script", {src: "/static/plotly.min.js"});
    s.onload = ok; s.onerror = () => fail(new Error("plotly.min.js did not load"));
    document.head.append(s);
  });
}

async function plot(div, traces, layout) {
  await needPlotly();
  await Plotly.react(div, traces, Object.assign({margin: {l: 60, r: 20, t: 30, b: 90}, hovermode: "closest",
                                           legend: {orientation: "h", y: -0.2}}, layout), {displaylogo: false, responsive: true});
}

// --- the night ------------------------------------------------------------------------------------------------
async function night() {
  const d = await getJSON("/api/night");
  state.night = d;
  const R = d.runs, keys = d.keys.map(k => k.key);
  if (!keys.includes(state.filters.key)) state.filters.key = keys[0] || "";
  const k = d.keys.find(x => x.key === state.filters.key) || {best_line: []};
  const idx = R.run_id.map((_, i) => i).filter(i => R.key[i] === state.filters.key);
  const count = s => idx.filter(i => R.status[i] === s).length;
  const scored = idx.filter(i => R.val_bpb[i] != null);
  const groups = {};
  for (const i of scored) (groups[`${R.host[i]} / ${R.branch[i]}`] ||= []).push(i);
  const SYMBOLS = ["circle", "square", "triangle-up", "cross", "star", "x", "pentagon", "hexagon"];   // per host/branch
  const traces = Object.entries(groups).map(([name, ii], g) => ({
    type: "scatter", mode: "markers", name: esc(name), x: ii.map(i => R.time[i]), y: ii.map(i => R.val_bpb[i]),
    marker: {size: 8, symbol: SYMBOLS[g % SYMBOLS.length], color: ii.map(i => COLORS[R.status[i]] || "#555")},
    customdata: ii.map(i => R.run_id[i]),
    text: ii.map(i => `${esc(R.status[i])} ${bpb(R.val_bpb[i])}<br>${esc(R.desc[i])}<br>seed ${R.seed[i]}`),
    hoverinfo: "text"}));
  const times = idx.map(i => R.time[i]).filter(Boolean).sort();
  if (k.best_mean != null && k.sigma != null && times.length) {
    const x = [times[0], times[times.length - 1]];
    traces.push({type: "scatter", mode: "lines", name: "best ± sigma", x, y: [k.best_mean - k.sigma, k.best_mean - k.sigma],
                 line: {width: 0}, showlegend: false, hoverinfo: "skip"});
    traces.push({type: "scatter", mode: "lines", name: "noise band (best mean ± sigma)", x,
                 y: [k.best_mean + k.sigma, k.best_mean + k.sigma], fill: "tonexty", fillcolor: "rgba(44,160,44,.15)",
                 line: {width: 0}, hoverinfo: "skip"});
  }
  if (k.best_line.length) {
    const last = times[times.length - 1];
    traces.push({type: "scatter", mode: "lines", name: "running best", line: {shape: "hv", color: "#2ca02c"},
                 x: k.best_line.map(p => p[0]).concat([last]), y: k.best_line.map(p => p[1]).concat([k.best_line.at(-1)[1]])});
  }
  const held = idx.filter(i => R.heldout[i] != null);
  if (held.length) traces.push({type: "scatter", mode: "markers", name: "held-out score (never shown to the agent)",
                                x: held.map(i => R.time[i]), y: held.map(i => R.heldout[i]),
                                marker: {symbol: "diamond-open", size: 11, color: "#000"}});
  const keySel = el("select", {id: "key"}, ...keys.map(x => el("option", {value: x, text: x})));
  keySel.value = state.filters.key;
  keySel.onchange = () => { state.filters.key = keySel.value; night(); };
  const best = d.keys.find(x => x.key === state.filters.key) || {};
  const chart = document.getElementById("night-chart") || el("div", {class: "chart", id: "night-chart"});
  main.replaceChildren(
    el("div", {class: "filters"}, el("label", {text: "comparability key "}), keySel),
    el("div", {class: "kpis", id: "kpis"}, kpi("runs", idx.length), kpi("keeps", count("keep")),
       kpi("confirm runs", count("confirm")), kpi("crashes", count("crash")), kpi("pruned", count("pruned")),
       kpi("best mean", best.best_mean == null ? "none" : `${bpb(best.best_mean)} (${best.best_runs} runs)`),
       kpi("noise floor sigma", best.sigma == null ? "not yet" : `${bpb(best.sigma)} (dof ${best.dof})`)),
    el("p", {class: "legend"}, "colour: the status; shape: the host / branch ",
       ...Object.keys(COLORS).map(st => el("span", {}, badge(st), " "))),
    chart);
  const fresh = !chart.data;
  await plot(chart, traces, {title: {text: "val_bpb over the night (lower is better)"}, yaxis: {title: {text: "val_bpb"}},
                             xaxis: {type: "date"}, uirevision: state.filters.key});     // zoom kept across updates
  if (fresh) chart.on("plotly_click", ev => { const id = ev.points[0].customdata; if (id) location.href = "/run/" + encodeURIComponent(id); });
}

// --- runs -------------------------------------------------------------------------------------------------------
async function runs() {
  const d = state.night = await getJSON("/api/night");
  if (state.table && document.getElementById("runs-body")) return state.table(d.runs);   // the filters stay as typed
  let R = d.runs;
  const f = state.filters;
  const uniq = col => [...new Set(R[col])].filter(v => v != null).sort();
  const select = (name, values) => {
    const s = el("select", {id: "f-" + name}, el("option", {value: "", text: `every ${name}`}),
                 ...values.map(v => el("option", {value: v, text: v})));
    s.value = f[name]; s.onchange = () => { f[name] = s.value; table(); };
    return s;
  };
  const input = (name, hint) => {
    const i = el("input", {id: "f-" + name, placeholder: hint, value: f[name]});
    i.oninput = () => { f[name] = i.value; table(); };
    return i;
  };
  const tbody = el("tbody", {id: "runs-body"}), shown = el("p", {id: "shown"});
  function table() {
    const text = f.text.toLowerCase();
    const match = [];
    for (let i = R.run_id.length - 1; i >= 0; i--) {
      if ((f.key && R.key[i] !== f.key) || (f.host && R.host[i] !== f.host) || (f.status && R.status[i] !== f.status)
          || (f.seed && String(R.seed[i]) !== f.seed.trim())
          || (text && !(R.desc[i] + " " + R.run_id[i]).toLowerCase().includes(text))) continue;
      match.push(i);
    }
    tbody.replaceChildren(...match.slice(0, SHOWN_ROWS).map(i => el("tr", {"data-run": R.run_id[i]},
      el("td", {}, runLink(R.run_id[i])), el("td", {text: R.time[i]}), el("td", {}, badge(R.status[i])),
      el("td", {class: "num", text: bpb(R.val_bpb[i])}), el("td", {class: "num", text: bpb(R.heldout[i])}),
      el("td", {text: R.host[i]}), el("td", {text: R.branch[i]}), el("td", {class: "num", text: R.seed[i]}),
      el("td", {text: R.config[i]}), el("td", {class: "desc", text: R.desc[i]}))));
    shown.textContent = `${match.length} of ${R.run_id.length} runs match` +
                        (match.length > SHOWN_ROWS ? ` (the newest ${SHOWN_ROWS} shown)` : "");
  }
  state.table = runsNow => { R = runsNow; table(); };
  main.replaceChildren(
    el("div", {class: "filters"}, select("key", uniq("key")), select("host", uniq("host")),
       select("status", uniq("status")), input("seed", "seed"), input("text", "description or run id")),
    shown,
    el("table", {id: "runs"}, el("thead", {}, el("tr", {}, ...["run", "time", "status", "val_bpb", "held-out", "host",
                                                             "branch", "seed", "configuration", "description"]
                                                   .map(h => el("th", {text: h})))), tbody));
  table();
}

// --- one run ------------------------------------------------------------------------------------------------------
function diffBlock(title, lines, why) {
  const pre = el("pre", {class: "diff"});
  for (const line of lines) pre.append(el("span", {class: line.startsWith("+") && !line.startsWith("+++") ? "add" :
                                                   line.startsWith("-") && !line.startsWith("---") ? "del" : ""},
                                          line + "\n"));
  return el("div", {class: "card"}, el("h3", {text: title}), lines.length ? pre : el("p", {text: why}));
}

function curveTraces(curve, name, best, extra) {
  const t = best.map(c => ({type: "scatter", mode: "lines", name: esc(`best: ${c.run_id} (seed ${c.seed})`),
                            x: c.curve.map(p => p[0]), y: c.curve.map(p => p[1]), line: {dash: "dot", color: "#2ca02c"}}));
  if (curve.length) t.push(Object.assign({type: "scatter", mode: "lines", name: esc(name), x: curve.map(p => p[0]),
                                          y: curve.map(p => p[1]), line: {color: "#d62728", width: 3}}, extra || {}));
  return t;
}

async function oneRun(id) {
  let d;
  try { d = await getJSON("/api/run/" + encodeURIComponent(id)); }
  catch (e) { main.replaceChildren(el("p", {class: "note", text: `no run ${id} in this ledger`})); return; }
  const r = d.row, dec = d.decision || {};
  const numbers = el("dl", {class: "numbers"});
  for (const [k, v] of Object.entries(dec)) numbers.append(el("dt", {text: k}), el("dd", {text: typeof v === "number" && !Number.isInteger(v) ? bpb(v) : v}));
  const chart = el("div", {class: "chart small", id: "run-chart"});
  put(
    el("h2", {}, badge(r.status), " ", el("span", {id: "run-id", text: r.run_id})),
    el("p", {id: "run-desc", text: r.description}),
    el("div", {class: "kpis"}, kpi("val_bpb", bpb(r.val_bpb) || "none"), kpi("held-out", bpb(d.heldout) || "not scored"),
       kpi("host / branch", `${d.host || "?"} / ${d.branch || "?"}`), kpi("seed", d.seed), kpi("steps", r.num_steps),
       kpi("configuration", (d.config || "").slice(0, 12))),
    el("p", {}, "built on: ", d.parent ? runLink(d.parent) : "no earlier run of its parent commit"),
    d.error ? el("p", {class: "note", text: "error: " + d.error}) : null,
    el("div", {class: "card"}, el("h3", {text: "decision"}), el("p", {text: dec.reason || r.status}), numbers),
    diffBlock("model.json against the run it built on", d.model_diff, d.files && d.parent_files ? "no change" :
              "not compared: the files of this run or of its parent are not in the ledger (only accepted runs of other hosts keep theirs)"),
    diffBlock("train.py against the run it built on", d.train_diff, d.files && d.parent_files ? "no change" : "not compared"),
    el("div", {class: "card"}, el("h3", {text: "train loss against the best configuration's runs"}), chart),
    el("div", {class: "card"}, el("h3", {text: "log (its end)"}), el("pre", {id: "log", text: d.log || "(no log of this run on this host)"})));
  await plot(chart, curveTraces(d.curve, r.run_id, d.best_curves), {xaxis: {title: {text: "share of the budget"}},
                                                              yaxis: {title: {text: "train loss (smoothed)"}}});
}

// --- running now -----------------------------------------------------------------------------------------------
async function live() {
  const d = await getJSON("/api/live");
  if (!d.length) { main.replaceChildren(el("p", {id: "none", text: "Nothing is running now."})); return; }
  const old = new Map([...main.querySelectorAll("[data-live]")].map(n => [n.dataset.live, n]));
  const cards = d.map(c => {
    const card = old.get(c.run_id) || el("div", {class: "card", "data-live": c.run_id},
      el("h3", {}, `${c.host || "?"} / ${c.branch || "?"}: `, el("span", {text: c.description})),
      el("p", {class: "meta"}), el("div", {class: "chart small"}));
    const mins = c.started ? ((Date.now() / 1000 - c.started) / 60).toFixed(1) : "?";
    card.querySelector(".meta").textContent = `run ${c.run_id}, seed ${c.seed}, configuration ${c.config}, ` +
      `started ${mins} min ago; ${c.curve.length} ${c.log_here ? "steps" : "points"} so far` + (c.log_here ? "" :
      " (its log is on another host: the curve its claim carries, every 10 s)");
    return card;
  });
  main.replaceChildren(...cards);            // in the page first: plotly sizes a chart by its place
  await Promise.all(d.map((c, i) => plot(cards[i].querySelector(".chart"), curveTraces(c.curve, "this run (live)",
    c.best_curves), {xaxis: {title: {text: "share of the budget"}, range: [0, 1]}, yaxis: {title: {text: "train loss"}}})));
}

// --- routing and updates -----------------------------------------------------------------------------------------
function route() {
  const p = location.pathname;
  if (p !== "/runs") { needPlotly(); state.table = null; }             // fetched beside the page's data
  for (const [id, on] of [["nav-night", p === "/"], ["nav-runs", p === "/runs"], ["nav-live", p === "/live"]])
    document.getElementById(id).classList.toggle("here", on);
  if (p === "/runs") return runs();
  if (p === "/live") return live();
  if (p.startsWith("/run/")) return oneRun(decodeURIComponent(p.slice(5)));
  return night();
}

let rendering = false, again = false;
async function render() {                     // one at a time: an update during a render renders once more after
  if (rendering) { again = true; return; }
  rendering = true;
  try {
    await route();
    const n = state.night;
    if (n) document.getElementById("ledger").textContent = `ledger: ${n.ledger}` + (n.note ? ` (${n.note})` : "");
    document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
    document.body.dataset.renderedAt = String(Math.round(performance.now()));     // ms since navigation
  } catch (e) {
    main.replaceChildren(el("p", {class: "note", text: `could not read the ledger: ${e.message}`}));
  } finally {
    rendering = false;
    if (again) { again = false; render(); }
  }
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/events");
  es.onopen = () => { conn.textContent = "live"; };
  es.onerror = () => { conn.textContent = "reconnecting…"; };
  es.onmessage = ev => {                      // the ledger's version, and the runs in flight's
    const v = JSON.parse(ev.data), old = state.versions || {};
    state.versions = v;
    if (!old.ledger) return;                  // the first message: the page was just drawn
    if (v.ledger !== old.ledger || (location.pathname === "/live" && v.live !== old.live)) render();
  };
}

render().then(connect);
