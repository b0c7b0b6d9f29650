// The dashboard's pages: each draws the JSON its page route serves (computed by
// metatune.figures, as the PNGs are) with plotly.js, and follows a running job through the
// API's event stream. Signed in by an HttpOnly cookie the scripts never read.
"use strict";

const metatune = (() => {
  const FINAL = ["succeeded", "failed", "cancelled"];
  const uiHeader = () => document.body.dataset.uiHeader || "X-Requested-With";

  async function api(method, url, body, prefetched) {
    const headers = {[uiHeader()]: "metatune-ui"};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = prefetched ? await prefetched :
      await fetch(url, {method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                        credentials: "same-origin"});
    if (response.status === 401) { window.location = "/ui/login?next=" + encodeURIComponent(location.pathname); }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return {ok: response.ok, status: response.status, data};
  }

  // --- formatting ---------------------------------------------------------------------------
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  };
  const num = (x, digits = 4) => (x === null || x === undefined) ? "–" : Number.isInteger(x) ? String(x) :
    (typeof x === "number" ? (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0) ? x.toExponential(digits - 1)
                                                                                     : x.toPrecision(digits)) : String(x));
  const hyper = (x) => {  // η or β: a float, K knot values, or either per group
    if (x === null || x === undefined) return "–";
    if (typeof x === "number") return num(x);
    if (Array.isArray(x)) return "[" + x.map((v) => num(v, 3)).join(", ") + "]";
    return Object.entries(x).map(([g, v]) => g + ": " + hyper(v)).join("; ");
  };
  const firstValue = (x) => typeof x === "number" ? x : Array.isArray(x) ? firstValue(x[0]) :
    (x && typeof x === "object") ? firstValue(Object.values(x)[0]) : null;
  const utc = (s) => s ? new Date(/([zZ]|[+-]\d\d:\d\d)$/.test(s) ? s : s + "Z") : null;
  const duration = (job) => {
    const start = utc(job.started_at);
    if (!start) return "–";
    const end = utc(job.finished_at) || new Date();
    const seconds = Math.max(0, (end - start) / 1000);
    return seconds < 120 ? seconds.toFixed(1) + " s" : (seconds / 60).toFixed(1) + " min";
  };
  const badge = (node, status) => { node.textContent = status; node.className = "badge " + status; };
  const progress = (job) => `${Math.round(job.gradient_evals)} / ${Math.round(job.budget)}`;

  // --- charts -------------------------------------------------------------------------------
  const LAYOUT = {margin: {l: 70, r: 20, t: 40, b: 55}, font: {size: 12}, legend: {orientation: "h", y: -0.22},
                  hovermode: "closest"};
  const CONFIG = {displaylogo: false, responsive: true};
  const draw = (id, traces, layout) => Plotly.react(id, traces, Object.assign({}, LAYOUT, layout), CONFIG);
  // a log axis labelled at each decade when it spans more than one, else at 1, 2 and 5 times each
  const logAxis = (title, low, high) => Object.assign({title: {text: title}, type: "log"},
    low > 0 ? logTicks(low, high) : {}, low > 0 ? {range: [Math.log10(low), Math.log10(high)]} : {});
  function logTicks(low, high) {  // labels at 1, 2 and 5 × 10^k (each decade alone over a wide range)
    const ratio = high / low, steps = ratio > 1000 ? [1] : ratio > 20 ? [1, 3] : ratio > 8 ? [1, 2, 5] : ratio > 3 ? [1, 1.5, 2, 3, 5, 7] : [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9];
    const tickvals = [];
    for (let k = Math.floor(Math.log10(low)) - 1; k <= Math.ceil(Math.log10(high)); k++) {
      for (const m of steps) { const v = m * 10 ** k; if (v >= low * 0.999 && v <= high * 1.001) tickvals.push(v); }
    }
    if (tickvals.length < 2) return {};
    return {tickvals, ticktext: tickvals.map((v) => (v >= 1e-3 && v < 1e4 ? String(+v.toPrecision(3)) : v.toExponential(0)))};
  }
  const extent = (values) => {  // of the positive values, widened 10 % each way in log
    const v = values.filter((x) => x !== null && x > 0);
    return v.length ? [Math.min(...v) / 1.1, Math.max(...v) * 1.1] : [0, 0];
  };
  const joined = (lines) => {  // several polylines as one trace, separated by gaps
    const x = [], y = [];
    for (const line of lines) { x.push(...line.lr, null); y.push(...line.momentum, null); }
    return {x, y};
  };

  function drawBest(id, best, trials) {
    const finite = trials.filter((t) => t.value !== null && t.status === "completed");
    draw(id, [
      {x: finite.map((t) => t.cumulative_evals), y: finite.map((t) => t.value), mode: "markers", type: "scatter",
       name: "trial ℓ_val", marker: {size: 5, color: "#9bb7d4"}, text: finite.map((t) => "trial " + t.number), meta: "values"},
      {x: best.evals, y: best.best, mode: "lines", type: "scatter", line: {shape: "hv", width: 2.5, color: "#1f77b4"},
       name: "best so far", connectgaps: false, meta: "best"},
    ], {title: {text: "Best validation loss so far"}, xaxis: {title: {text: "gradient evaluations"}, rangemode: "tozero"},
        yaxis: logAxis("validation loss ℓ_val (log)", ...extent(finite.map((t) => t.value)))});
  }

  function drawPlane(id, plane, title) {
    const traces = [], annotations = [];
    const map = plane.map;
    if (map) {
      for (const outline of map.unstable) {
        traces.push({x: outline.lr, y: outline.momentum, fill: "toself", fillcolor: "rgba(230,120,120,0.22)",
                     line: {width: 0}, mode: "lines", name: "ρ > 1", hoverinfo: "skip", meta: "unstable"});
      }
      for (const contour of map.contours) {
        if (!contour.lines.length) continue;
        const {x, y} = joined(contour.lines);
        traces.push({x, y, mode: "lines", line: {color: "#888", width: 1}, name: "ρ = " + contour.level,
                     showlegend: false, hoverinfo: "name", meta: "contour"});
        if (contour.label) {
          annotations.push({x: Math.log10(contour.label.lr), y: contour.label.momentum, text: "ρ=" + contour.level,
                            showarrow: false, font: {size: 10, color: "#555"}, bgcolor: "rgba(255,255,255,0.7)"});
        }
      }
      const boundary = joined(map.boundary);
      traces.push({x: boundary.x, y: boundary.y, mode: "lines", line: {color: "black", width: 2.5},
                   name: "ρ = 1 (critical η)", meta: "boundary"});
    }
    const finite = plane.trials.finite, diverged = plane.trials.diverged;
    const label = (t, i) => `trial ${t.number[i]}${t.slot[i]}<br>η=${num(t.lr[i])} β=${num(t.momentum[i])}` +
      `<br>ℓ=${num(t.value[i])} ρ=${num(t.rho[i])}`;
    // one trace per group or knot (its own marker), one colour scale: log10 ℓ_val
    const slots = [...new Set(finite.slot)], symbols = ["circle", "square", "diamond", "triangle-up", "cross", "star-triangle-up"];
    const range = finite.log_value.length ? [Math.min(...finite.log_value), Math.max(...finite.log_value)] : [0, 1];
    const many = slots.length > symbols.length;
    (many ? [null] : slots).forEach((slot, k) => {
      const rows = finite.lr.map((_, i) => i).filter((i) => many || finite.slot[i] === slot);
      traces.push({x: rows.map((i) => finite.lr[i]), y: rows.map((i) => finite.momentum[i]), mode: "markers",
                   type: "scatter", name: slot ? "trials, η and β of " + slot : "trials", meta: "trials",
                   text: rows.map((i) => label(finite, i)), hoverinfo: "text",
                   marker: {size: 7, symbol: many ? "circle" : symbols[k], color: rows.map((i) => finite.log_value[i]),
                            colorscale: "Viridis", cmin: range[0], cmax: range[1], showscale: k === 0,
                            colorbar: {title: {text: "log10 ℓ_val"}, thickness: 12}}});
    });
    const divergedTrials = new Set(diverged.number).size;
    traces.push({x: diverged.lr, y: diverged.momentum, mode: "markers", name: `diverged (${divergedTrials})`,
                 marker: {symbol: "x", color: "red", size: 8}, meta: "diverged",
                 text: diverged.lr.map((_, i) => label(diverged, i)), hoverinfo: "text"});
    plane.paths.forEach((path, i) => {
      traces.push({x: path.lr, y: path.momentum, mode: "lines+markers", line: {color: "orange", width: 2},
                   marker: {size: 5}, name: `metagrad chain ${path.start}${path.slot}`, legendgroup: "paths",
                   showlegend: i === 0 || plane.paths.length <= 4, meta: "path",
                   text: path.numbers.map((n) => "trial " + n), hoverinfo: "text+x+y"});
    });
    if (plane.optimum) {
      traces.push({x: [plane.optimum.lr], y: [plane.optimum.momentum], mode: "markers", name: "rate-optimal (η*, β*)",
                   marker: {symbol: "star", size: 14, color: "magenta"}, meta: "optimum"});
    }
    const xr = map ? map.lr_range : null, yr = map ? map.momentum_range : null;
    draw(id, traces, {title: {text: title || (map ? `η–β plane: ρ from λ ∈ {${map.eigenvalues.map((v) => num(v, 3)).join(", ")}} at θ₀`
                                                     : "η–β plane (no curvature estimate)")},
                      xaxis: xr ? logAxis("learning rate η (log)", xr[0], xr[1]) : {title: {text: "learning rate η (log)"}, type: "log"},
                      yaxis: {title: {text: "momentum β"}, range: yr || undefined}, annotations});
  }

  function drawOuter(outer) {
    const params = [], grads = [];
    for (const s of outer) {
      const name = `chain ${s.start}${s.slot}`;
      params.push({x: s.step, y: s.lr, mode: "lines+markers", name: "η " + name, yaxis: "y", meta: "lr"});
      params.push({x: s.step, y: s.momentum, mode: "lines+markers", name: "β " + name, yaxis: "y2",
                   line: {dash: "dot"}, meta: "momentum"});
      grads.push({x: s.step, y: s.dlr, mode: "lines+markers", name: "∂ℓ/∂η " + name, yaxis: "y", meta: "dlr"});
      grads.push({x: s.step, y: s.dmomentum, mode: "lines+markers", name: "∂ℓ/∂β " + name, yaxis: "y2",
                  line: {dash: "dot"}, meta: "dmomentum"});
    }
    const axes = (left, right) => ({margin: Object.assign({}, LAYOUT.margin, {r: 80}),
                                    xaxis: {title: {text: "outer step (meta-gradient evaluations along a chain)"}, dtick: 1},
                                    yaxis: {title: {text: left}}, yaxis2: {title: {text: right}, overlaying: "y", side: "right", tickmode: "auto",
                                                                     nticks: 6, showgrid: false}});
    draw("chart-outer", params, Object.assign({title: {text: "η and β per outer step"}},
                                              axes("learning rate η (log)", "momentum β (dotted)"),
                                              {yaxis: logAxis("learning rate η (log)", ...extent(outer.flatMap((s) => s.lr)))}));
    draw("chart-grads", grads, Object.assign({title: {text: "Meta-gradients per outer step"}},
                                             axes("∂ℓ_val/∂η", "∂ℓ_val/∂β (dotted)")));
  }

  function drawSchedule(schedule) {
    const traces = [];
    for (const s of schedule.series) {
      traces.push({x: schedule.steps, y: s.lr, mode: "lines", name: "η_t " + s.label});
      traces.push({x: schedule.steps, y: s.momentum, mode: "lines", name: "β_t " + s.label, yaxis: "y2", line: {dash: "dot"}});
      if (s.knots) traces.push({x: s.knots.steps, y: s.knots.lr, mode: "markers", name: "knots", marker: {size: 7}});
    }
    draw("chart-schedule", traces, {title: {text: "Best trial's schedule"}, xaxis: {title: {text: "inner step t"}},
                                    margin: Object.assign({}, LAYOUT.margin, {r: 80}),
                                    yaxis: logAxis("learning rate η_t (log)", ...extent(schedule.series.flatMap((s) => s.lr))),
                                    yaxis2: {title: {text: "momentum β_t (dotted)"}, overlaying: "y", side: "right"}});
  }

  // --- tables -------------------------------------------------------------------------------
  function sortable(table, rows, render) {
    let key = null, ascending = true;
    for (const th of table.querySelectorAll("th[data-key]")) {
      th.addEventListener("click", () => {
        ascending = key === th.dataset.key ? !ascending : true;
        key = th.dataset.key;
        table.querySelectorAll("th").forEach((h) => h.classList.remove("asc", "desc"));
        th.classList.add(ascending ? "asc" : "desc");
        render(sorted());
      });
    }
    const value = (row) => { const v = row[key]; return typeof v === "number" ? v : firstValue(v); };
    const sorted = () => key === null ? rows() : [...rows()].sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * (ascending ? 1 : -1);
    });
    return sorted;
  }

  function trialRow(t) {
    const unstable = t.spectral_radius !== null && t.spectral_radius >= 1;
    const row = el("tr", {class: t.status + (unstable ? " unstable" : ""), "data-number": t.number},
      el("td", {text: t.number}), el("td", {text: t.status}), el("td", {text: hyper(t.lr)}),
      el("td", {text: hyper(t.momentum)}), el("td", {text: num(t.value)}),
      el("td", {text: num(t.spectral_radius, 3) + (unstable ? " ⚠" : ""), title: unstable ? "ρ ≥ 1: unstable at θ₀" : ""}),
      el("td", {text: num(t.gradient_evals)}), el("td", {text: num(t.cumulative_evals)}));
    return row;
  }

  // --- pages --------------------------------------------------------------------------------
  function loginPage() {
    const form = document.getElementById("login-form");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const reply = await fetch("/ui/session", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify({token: document.getElementById("token").value})});
      if (reply.ok) { window.location = form.dataset.next || "/ui"; return; }
      const data = await reply.json().catch(() => ({}));
      document.getElementById("login-error").textContent = data.detail || "sign-in failed";
    });
  }

  function jobsPage() {
    const form = document.getElementById("filters"), body = document.querySelector("#jobs tbody");
    const params = new URLSearchParams(location.search);
    for (const name of ["status", "method", "objective"]) if (params.get(name)) form.elements[name].value = params.get(name);
    let offset = Number(params.get("offset") || 0), timer = null;
    const limit = 20;
    async function load() {
      const query = new URLSearchParams({limit, offset});
      for (const name of ["status", "method", "objective"]) if (form.elements[name].value) query.set(name, form.elements[name].value);
      history.replaceState(null, "", "?" + query.toString());
      const reply = await api("GET", "/v1/jobs?" + query.toString());
      if (!reply.ok) return;
      const {items, total} = reply.data;
      body.replaceChildren(...items.map((job) => el("tr", {class: job.status, "data-job-id": job.id},
        el("td", {}, el("a", {href: "/ui/jobs/" + job.id, text: job.id.slice(0, 8)})),
        el("td", {}, el("span", {class: "badge " + job.status, text: job.status})),
        el("td", {text: job.method + (job.groups ? ` (per ${typeof job.groups === "string" ? job.groups : "group"})` : "")
                        + (job.schedule && (job.schedule.knots > 1 || job.schedule.shape !== "knots") ? " · schedule" : "")}),
        el("td", {text: job.objective}), el("td", {text: job.seed}),
        el("td", {}, el("progress", {max: job.budget, value: Math.min(job.gradient_evals, job.budget)}), " " + progress(job)),
        el("td", {text: job.trials}), el("td", {text: job.best_trial ? num(job.best_trial.value) : "–"}),
        el("td", {text: duration(job)}), el("td", {text: (utc(job.created_at) || new Date()).toISOString().slice(0, 19).replace("T", " ")}),
        el("td", {}, job.comparison_id ? el("a", {href: "/ui/comparisons/" + job.comparison_id, text: job.comparison_id.slice(0, 8)}) : ""))));
      document.getElementById("page-info").textContent = total ? `${offset + 1}–${offset + items.length} of ${total}` : "no jobs";
      document.getElementById("prev").disabled = offset === 0;
      document.getElementById("next").disabled = offset + items.length >= total;
      const live = items.some((job) => !FINAL.includes(job.status));
      document.getElementById("live").textContent = live ? "updating while jobs run…" : "";
      clearTimeout(timer);
      if (live) timer = setTimeout(load, 2000);
    }
    form.addEventListener("change", () => { offset = 0; load(); });
    document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - limit); load(); });
    document.getElementById("next").addEventListener("click", () => { offset += limit; load(); });
    load();
  }

  function jobPage() {
    const root = document.getElementById("job-page"), id = root.dataset.jobId;
    const table = document.getElementById("trials"), body = table.querySelector("tbody");
    let data = null, loading = false, again = false, source = null;
    const sorted = sortable(table, () => (data ? data.trials : []), (rows) => body.replaceChildren(...rows.map(trialRow)));
    async function load() {
      if (loading) { again = true; return; }
      loading = true;
      const reply = await api("GET", "/ui/data/jobs/" + id, undefined, window.metatunePrefetch);
      window.metatunePrefetch = null;
      loading = false;
      if (!reply.ok) { document.getElementById("job-error").textContent = (reply.data && reply.data.detail) || "failed to load"; return; }
      data = reply.data;
      performance.mark("data");
      render();
      if (again) { again = false; setTimeout(load, 300); }
    }
    function render() {
      const job = data.job;
      badge(document.getElementById("status"), job.status);
      document.getElementById("summary").textContent =
        `${job.method} on ${job.objective}, seed ${job.seed}` + (job.groups ? `, per ${job.groups}` : "") +
        ` · ${job.trials} trials · ${progress(job)} gradient evaluations · best ℓ_val ` +
        (job.best_trial ? num(job.best_trial.value) : "–") + ` · wall ${duration(job)}`;
      document.getElementById("progress-bar").style.width = Math.min(100, 100 * job.gradient_evals / job.budget) + "%";
      document.getElementById("job-error").textContent = job.error || "";
      document.getElementById("cancel").hidden = FINAL.includes(job.status);
      document.getElementById("trial-count").textContent = `(${data.trials.length})`;
      document.getElementById("spec").textContent = JSON.stringify(job.spec, null, 2);
      body.replaceChildren(...sorted().map(trialRow));
      performance.mark("table");
      drawBest("chart-best", data.best_so_far, data.trials);
      performance.mark("best");
      drawPlane("chart-plane", data.plane);
      performance.mark("plane");
      const metagrad = data.outer.length > 0;
      document.getElementById("fig-outer").hidden = !metagrad;
      document.getElementById("fig-grads").hidden = !metagrad;
      if (metagrad) drawOuter(data.outer);
      document.getElementById("fig-schedule").hidden = !data.schedule;
      if (data.schedule) drawSchedule(data.schedule);
      document.body.dataset.rendered = String(data.trials.length);
      document.body.dataset.status = job.status;
      if (FINAL.includes(job.status) && source) { source.close(); source = null; }
    }
    document.getElementById("cancel").addEventListener("click", async () => {
      const reply = await api("POST", `/v1/jobs/${id}/cancel`);
      if (!reply.ok) document.getElementById("job-error").textContent = (reply.data && reply.data.detail) || "cancel failed";
      load();
    });
    load().then(() => {
      if (data && FINAL.includes(data.job.status)) return;
      source = new EventSource(`/v1/jobs/${id}/events?interval=0.5`);
      let pending = null;
      const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; load(); }, 700); };
      source.addEventListener("trial", soon);
      source.addEventListener("status", (event) => {
        const status = JSON.parse(event.data).status;
        if (FINAL.includes(status)) { source.close(); source = null; clearTimeout(pending); pending = null; load(); } else soon();
      });
      source.onerror = () => { if (source && source.readyState === EventSource.CLOSED) setTimeout(load, 2000); };
    });
  }

  function comparisonPage() {
    const root = document.getElementById("comparison-page"), id = root.dataset.comparisonId;
    let timer = null;
    async function load() {
      const reply = await api("GET", "/ui/data/comparisons/" + id);
      if (!reply.ok) return;
      const c = reply.data;
      document.getElementById("name").textContent = c.name;
      document.title = c.name + " · metatune";
      badge(document.getElementById("status"), c.status);
      document.getElementById("summary").textContent = `${c.jobs.length} jobs on ${c.objective}, ${Math.round(c.budget)} gradient evaluations each`;
      const traces = [];
      const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
      c.convergence.methods.forEach((m, i) => {
        const color = palette[i % palette.length];
        traces.push({x: c.convergence.grid, y: m.low, mode: "lines", line: {width: 0, color}, showlegend: false,
                     hoverinfo: "skip", legendgroup: m.method, meta: "band"});
        traces.push({x: c.convergence.grid, y: m.high, mode: "lines", line: {width: 0, color}, fill: "tonexty",
                     fillcolor: color.replace("#", "") && hexAlpha(color, 0.15), showlegend: false, hoverinfo: "skip",
                     legendgroup: m.method, meta: "band"});
        traces.push({x: c.convergence.grid, y: m.median, mode: "lines", line: {width: 2.5, color},
                     name: `${m.method} (${m.runs} seed${m.runs === 1 ? "" : "s"})`, legendgroup: m.method, meta: "median"});
      });
      if (c.target !== null) {
        traces.push({x: [0, c.budget], y: [c.target, c.target], mode: "lines", line: {dash: "dot", color: "grey", width: 1},
                     name: `target ${num(c.target, 3)}`, meta: "target", hoverinfo: "name"});
      }
      draw("chart-convergence", traces, {title: {text: "Best validation loss so far (median, band = min–max)"},
           xaxis: {title: {text: "gradient evaluations"}, range: [0, c.budget]},
           yaxis: logAxis("best validation loss so far (log)",
                          ...extent(c.convergence.methods.flatMap((m) => [...m.low, ...m.high])))});
      const table = document.getElementById("table");
      if (c.table) {
        const columns = Object.keys(c.table[0] || {});
        table.replaceChildren(el("table", {class: "grid", id: "summary-table"},
          el("thead", {}, el("tr", {}, ...columns.map((k) => el("th", {text: k.replaceAll("_", " ")})))),
          el("tbody", {}, ...c.table.map((row) => el("tr", {}, ...columns.map((k) => el("td", {text: typeof row[k] === "object" && row[k] !== null ? hyper(row[k]) : num(row[k])})))))));
      }
      document.querySelector("#comparison-jobs tbody").replaceChildren(...c.jobs.map((job) => el("tr", {class: job.status},
        el("td", {}, el("a", {href: "/ui/jobs/" + job.id, text: job.id.slice(0, 8)})), el("td", {text: job.method}),
        el("td", {text: job.seed}), el("td", {}, el("span", {class: "badge " + job.status, text: job.status})),
        el("td", {text: progress(job)}), el("td", {text: job.best_trial ? num(job.best_trial.value) : "–"}))));
      document.getElementById("plots").replaceChildren(...c.plots.map((url) => el("a", {href: url, text: url.split("/").pop() + " "})));
      document.body.dataset.status = c.status;
      clearTimeout(timer);
      if (!c.final || !c.table) timer = setTimeout(load, 2000);
    }
    load();
  }

  function hexAlpha(hex, alpha) {
    const v = parseInt(hex.slice(1), 16);
    return `rgba(${(v >> 16) & 255},${(v >> 8) & 255},${v & 255},${alpha})`;
  }

  function describeErrors(detail) {
    if (typeof detail === "string") return [detail];
    if (Array.isArray(detail)) return detail.map((e) => (e.loc ? e.loc.filter((p) => p !== "body").join(".") + ": " : "") + e.msg);
    return [JSON.stringify(detail)];
  }

  function submitPage() {
    const form = document.getElementById("submit-form"), errors = document.getElementById("submit-errors");
    const kind = () => form.elements.kind.value;
    const toggle = () => {
      form.querySelectorAll(".for-job").forEach((n) => { n.hidden = kind() !== "job"; });
      form.querySelectorAll(".for-comparison").forEach((n) => { n.hidden = kind() !== "comparison"; });
    };
    form.addEventListener("change", toggle);
    toggle();
    const number = (text) => (text.trim() === "" ? undefined : Number(text));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      errors.replaceChildren();
      let params;
      try { params = JSON.parse(form.elements.objective_params.value || "{}"); } catch (e) {
        errors.append(el("li", {text: "objective parameters: not JSON (" + e.message + ")"})); return;
      }
      const space = {};
      const schedule = form.elements.schedule.value;
      if (schedule === "knots") space.schedule = {knots: number(form.elements.knots.value)};
      if (schedule === "warmup-cosine") space.schedule = {shape: "warmup-cosine"};
      if (form.elements.groups.value) space.groups = form.elements.groups.value;
      const body = {objective: form.elements.objective.value, objective_params: params, space,
                    budget: {gradient_evals: number(form.elements.gradient_evals.value)},
                    concurrency: number(form.elements.concurrency.value)};
      let url = "/v1/jobs";
      if (kind() === "job") {
        body.method = form.elements.method.value;
        body.seed = number(form.elements.seed.value);
      } else {
        url = "/v1/comparisons";
        body.methods = [...form.querySelectorAll("input[name=methods]:checked")].map((n) => n.value);
        body.seeds = number(form.elements.seeds.value);
      }
      const reply = await api("POST", url, body);
      if (reply.ok) { window.location = (kind() === "job" ? "/ui/jobs/" : "/ui/comparisons/") + reply.data.id; return; }
      for (const message of describeErrors(reply.data ? reply.data.detail : "HTTP " + reply.status)) errors.append(el("li", {text: message}));
    });
  }

  return {loginPage, jobsPage, jobPage, comparisonPage, submitPage};
})();
