// A learner's page: Ruby errors over time (stacked by class), top error classes, notebooks,
// lab, LMS, energy, position in the cohort and the timeline; refreshed live.
"use strict";
(function () {
  const { el, get, time, message, withToken, poll, report } = window.LT;
  const learner = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
  const STATUS = { STATUS_PASSED: "✓ passed", STATUS_FAILED: "✗ failed", STATUS_NOT_RUN: "○ not run", STATUS_UNANSWERED: "– unanswered", STATUS_NEEDS_MANUAL_GRADING: "? manual" };
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
  const n = (v) => Number(v || 0);
  let lastText = "";
  let summary = null;
  // the newest page (refreshed live) and the older pages asked for with "Older events"
  let newest = { events: [] };
  let older = [];
  let olderNext = null;

  function rows(id, list) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren(...list);
  }

  // Colour-blind readers: the Okabe-Ito colours, and each error class also gets its own fill
  // pattern (solid, stripes, dots, cross-hatch), so classes differ in shape as well as colour;
  // every chart's numbers are in a table beside it.
  const charts = {};
  function pattern(colour, kind) {
    if (kind === 0) return colour;
    const tile = document.createElement("canvas");
    tile.width = tile.height = 8;
    const g = tile.getContext("2d");
    g.fillStyle = colour; g.fillRect(0, 0, 8, 8);
    g.strokeStyle = g.fillStyle = "rgba(255,255,255,0.85)"; g.lineWidth = 1.5;
    if (kind === 1) { g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.stroke(); }
    else if (kind === 2) { g.beginPath(); g.arc(4, 4, 1.6, 0, 2 * Math.PI); g.fill(); }
    else { g.beginPath(); g.moveTo(0, 4); g.lineTo(8, 4); g.moveTo(4, 0); g.lineTo(4, 8); g.stroke(); }
    return g.createPattern(tile, "repeat");
  }
  // Draws `config` on a fresh canvas in `box` before `rest`; replaces the chart drawn there before.
  function draw(box, label, config, ...rest) {
    if (charts[box.id]) { charts[box.id].destroy(); delete charts[box.id]; }
    const canvas = el("canvas", { role: "img", "aria-label": label });
    box.replaceChildren(el("div", { class: "chart-box" }, canvas), ...rest);
    config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, config.options);
    charts[box.id] = new window.Chart(canvas, config);
  }

  // errors per (UTC day, class) from the recent errors, as a stacked bar chart and its table
  function errorsChart(recent) {
    const days = [...new Set(recent.map((e) => (e.occurredAt || "").slice(0, 10)))].sort();
    const classes = [...new Set(recent.map((e) => e.className))].sort();
    const count = (d, c) => recent.filter((e) => (e.occurredAt || "").slice(0, 10) === d && e.className === c).length;
    const box = document.getElementById("errors-chart");
    if (!recent.length) {
      if (charts[box.id]) { charts[box.id].destroy(); delete charts[box.id]; }
      box.replaceChildren(el("p", { text: "No Ruby errors." }));
      return;
    }
    const table = el("table", { id: "errors-data" }, el("caption", { text: "Errors per day and class" }),
      el("tr", {}, el("th", { scope: "col", text: "Day" }), el("th", { scope: "col", text: "Class" }), el("th", { scope: "col", text: "Errors" })));
    for (const d of days) for (const c of classes) {
      const v = count(d, c);
      if (v) table.append(el("tr", { "data-day": d, "data-class": c, "data-count": String(v) }, el("td", { text: d }), el("td", { text: c }), el("td", { class: "num", text: String(v) })));
    }
    draw(box, "Ruby errors per day, stacked by error class (the numbers are in the table below)", {
      type: "bar",
      data: {
        labels: days,
        datasets: classes.map((c, j) => ({
          label: c,
          data: days.map((d) => count(d, c)),
          backgroundColor: pattern(PALETTE[j % PALETTE.length], j % 4),
          borderColor: PALETTE[j % PALETTE.length],
          borderWidth: 1,
        })),
      },
      options: {
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: "errors" } } },
        plugins: { legend: { position: "bottom" } },
      },
    }, el("details", {}, el("summary", { text: "Chart data" }), table));
  }

  function topErrors(ruby) {
    const byClass = Object.entries(ruby.errorsByClass || {}).map(([c, v]) => [c, n(v)]).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    rows("top-errors", byClass.map(([c, v]) => {
      const last = (ruby.recentErrors || []).find((e) => e.className === c);
      return el("tr", { "data-class": c, "data-count": String(v) }, el("td", { text: c }), el("td", { class: "num", text: String(v) }),
        el("td", { text: last ? time(last.occurredAt) : "—" }), el("td", { class: "where", text: last ? last.file + ":" + last.line : "—" }));
    }));
  }

  function notebookRows(list) {
    rows("assignments", list.map((a) => {
      const problems = Object.entries(a.problems || {}).sort().map(([g, p]) => g + " " + (STATUS[p.status] || p.status) + " " + n(p.points) + "/" + n(p.maxPoints));
      return el("tr", { "data-assignment": a.assignment, "data-passed": String(a.passed || 0), "data-known": String(a.known || 0) },
        el("td", { text: a.course }), el("td", { text: a.assignment }), el("td", { class: "num", text: String(a.passed || 0) }),
        el("td", { class: "num", text: String(a.known || 0) }), el("td", { class: "num", text: Math.round(n(a.completion) * 100) + "%" }), el("td", { text: problems.join(" · ") }));
    }));
  }

  function labRows(lab) {
    const list = Object.entries(lab.experiments || {}).sort();
    rows("lab", list.map(([x, k]) => {
      const kinds = Object.entries(k.kinds || {}).sort();
      const total = kinds.reduce((s, [, v]) => s + n(v), 0);
      return el("tr", { "data-experiment": x, "data-total": String(total) }, el("td", { text: x }),
        el("td", { text: kinds.map(([kind, v]) => (kind || "other") + " " + n(v)).join(", ") }), el("td", { class: "num", text: String(total) }));
    }));
  }

  function lmsRows(lms) {
    const v = document.getElementById("videos");
    v.textContent = "Videos: " + n(lms.videosPlayed) + " played, " + n(lms.videosPaused) + " paused, " + n(lms.videosEnded) + " ended; " + Math.round(n(lms.secondsWatched)) + " s watched.";
    v.dataset.played = String(n(lms.videosPlayed));
    v.dataset.seconds = String(n(lms.secondsWatched));
    rows("assessments", (lms.assessments || []).map((a) => el("tr", { "data-assessment": a.assessmentId, "data-best": String(n(a.bestScore)), "data-max": String(n(a.maxScore)), "data-attempts": String(n(a.attempts)) },
      el("td", { text: a.course }), el("td", { text: a.assessmentId }), el("td", { class: "num", text: String(n(a.bestScore)) }), el("td", { class: "num", text: String(n(a.maxScore)) }), el("td", { class: "num", text: String(n(a.attempts)) }))));
  }

  function energyRows(list) {
    document.getElementById("energy-section").hidden = !list.length;
    rows("energy", list.map((e) => el("tr", { "data-meter": e.cloudId, "data-kw": String(n(e.latestDemandKw)) }, el("td", { text: e.cloudId }), el("td", { class: "num", text: String(n(e.latestDemandKw)) }),
      el("td", { text: Object.entries(e.kwhDeliveredPerDay || {}).sort().map(([d, k]) => d + ": " + Math.round(k * 1000) / 1000).join(", ") }))));
  }

  function describe(e) {
    const p = e.rubyRun || e.notebookSnapshot || e.labLog || e.lmsEvent || e.energyReading || {};
    if (e.rubyRun) return "Ruby run" + (p.error ? ": " + p.error.className + " at " + p.error.file + ":" + p.error.line : " (exit " + (p.exitCode ?? 0) + ")");
    if (e.notebookSnapshot) return "notebook " + p.path + " saved";
    if (e.labLog) return "lab " + p.experiment + " " + (p.logKind || "");
    if (e.energyReading) return "meter " + p.cloudId + " " + n(p.demandKw) + " kW";
    if (e.lmsEvent) {
      const what = String(p.eventType || "").replace(/^LMS_EVENT_TYPE_/, "").toLowerCase().replace(/_/g, " ");
      const a = p.assessment, v = p.video;
      if (a) return what + " " + a.assessmentId + ": " + n(a.score) + "/" + n(a.maxScore);
      if (v) return what + " " + v.videoId + (v.currentTime === undefined ? "" : " at " + n(v.currentTime) + " s");
      return what + " " + (p.courseSlug || "");
    }
    return e.source + " " + e.kind;
  }

  function timeline(page) {
    newest = page;
    const first = page.events || [];
    const shown = new Set(first.map((e) => e.id));
    // an event may sit on two pages (one millisecond's events all come on a page): shown once
    const rest = older.filter((e) => !shown.has(e.id) && shown.add(e.id));
    document.getElementById("timeline").replaceChildren(...first.concat(rest).map((e) =>
      el("li", { "data-id": e.id }, el("time", { datetime: e.occurredAt || "", text: time(e.occurredAt) }), e.source + "/" + e.kind + " — " + describe(e))));
    const next = older.length ? olderNext : page.nextBefore;
    const button = document.getElementById("timeline-older");
    button.hidden = !next;
    button.dataset.before = next || "";
  }

  async function olderEvents() {
    const button = document.getElementById("timeline-older");
    if (!button.dataset.before) return;
    button.disabled = true;
    try {
      const page = await get("/api/v1/learners/" + encodeURIComponent(learner) + "/timeline?limit=50&before=" + encodeURIComponent(button.dataset.before));
      older = older.concat(page.events || []);
      olderNext = page.nextBefore || null;
      timeline(newest);
    } catch (err) {
      message("Older events cannot be shown (" + err.message + ").", true);
    } finally {
      button.disabled = false;
    }
  }

  async function compare() {
    const course = document.getElementById("compare-course").value;
    const metric = document.getElementById("compare-metric").value;
    const box = document.getElementById("compare-chart");
    if (!course) { box.replaceChildren(el("p", { text: "No course to compare in." })); return; }
    let c;
    try { c = await get("/api/v1/learners/" + encodeURIComponent(learner) + "/compare?course=" + encodeURIComponent(course) + "&metric=" + metric); }
    catch (err) { box.replaceChildren(el("p", { text: "The cohort cannot be shown (" + err.message + ")." })); return; }
    // the API's JSON leaves out numbers that are 0
    const ds = (c.deciles || []).map(n), value = n(c.value), rank = n(c.percentileRank), size = n(c.cohortSize);
    const text = el("p", { id: "compare-text", "data-value": String(value), "data-rank": String(rank), "data-size": String(size),
      text: metric + ": " + Math.round(value * 1000) / 1000 + " — percentile rank " + Math.round(rank) + " among " + size + " learners (triangle = this learner; dots = the cohort's deciles, 0th to 100th)." });
    const table = el("table", { id: "compare-data" }, el("caption", { text: "The cohort's deciles of " + metric + ", and this learner" }),
      el("tr", {}, el("th", { scope: "col", text: "Percentile" }), el("th", { scope: "col", text: metric })));
    ds.forEach((d, i) => table.append(el("tr", { "data-decile": String(i * 10), "data-value": String(d) },
      el("td", { text: "p" + i * 10 }), el("td", { class: "num", text: String(Math.round(d * 1000) / 1000) }))));
    table.append(el("tr", { "data-learner": String(value) }, el("th", { scope: "row", text: "this learner" }),
      el("td", { class: "num", text: String(Math.round(value * 1000) / 1000) })));
    draw(box, "The cohort's distribution of " + metric + " (deciles) with this learner marked (the numbers are in the table below)", {
      type: "scatter",
      data: {
        datasets: [
          { label: "cohort deciles", data: ds.map((d, i) => ({ x: d, y: 0, decile: i * 10 })), pointStyle: "circle", pointRadius: 5, backgroundColor: PALETTE[0], borderColor: PALETTE[0] },
          { label: "this learner", data: [{ x: value, y: 0 }], pointStyle: "triangle", pointRadius: 11, backgroundColor: PALETTE[5], borderColor: "#000" },
        ],
      },
      options: {
        layout: { padding: { left: 12, right: 14 } },
        scales: { y: { display: false, min: -1, max: 1 }, x: { title: { display: true, text: metric } } },
        plugins: {
          legend: { position: "bottom", labels: { usePointStyle: true } },
          tooltip: { callbacks: { label: (t) => (t.raw.decile !== undefined ? "p" + t.raw.decile + ": " : "this learner: ") + t.raw.x } },
        },
      },
    }, text, el("details", {}, el("summary", { text: "Chart data" }), table));
  }

  async function load() {
    const [head, s, page] = await Promise.all([
      get("/api/v1/dashboard/learners/" + encodeURIComponent(learner)),
      get("/api/v1/learners/" + encodeURIComponent(learner) + "/summary"),
      get("/api/v1/learners/" + encodeURIComponent(learner) + "/timeline?limit=50"),
    ]);
    const text = JSON.stringify([head, s, page]);
    if (text === lastText) return;
    lastText = text; summary = s;
    const who = head.name ? head.name + " (" + learner + ")" : learner;
    document.getElementById("learner-title").textContent = who;
    document.title = "Learntrail · " + who;
    const ruby = s.ruby || {};
    document.getElementById("overview").textContent = n(s.events) + " events; last activity " + time(s.lastActivity) + "; Ruby runs " + n(ruby.runs) + ", failed " + n(ruby.failedRuns) + "; courses: " + ((s.courses || []).join(", ") || "—");
    errorsChart(ruby.recentErrors || []);
    topErrors(ruby);
    notebookRows(s.assignments || []);
    labRows(s.lab || {});
    lmsRows(s.lms || {});
    energyRows(s.energy || []);
    timeline(page);
    const pick = document.getElementById("compare-course");
    const keep = pick.value;
    pick.replaceChildren(...(s.courses || []).map((c) => el("option", { value: c, text: c })));
    if (keep && (s.courses || []).includes(keep)) pick.value = keep;
    document.getElementById("learner").hidden = false;
    await compare();
    requestAnimationFrame(() => { document.body.dataset.painted = "learner"; });
  }

  withToken(() => {
    document.getElementById("compare-form").addEventListener("change", () => compare());
    document.getElementById("timeline-older").addEventListener("click", () => olderEvents());
    poll(async () => {
      try { await load(); message(""); }
      catch (err) {
        if (err.status === 403) {
          document.getElementById("learner").hidden = true;
          message("Not allowed: you may not see this learner's page (" + err.message + ").", true);
          document.body.dataset.error = "403";
          return;
        }
        throw err;
      }
    }, window.LT.REFRESH_MS);
  });
})();
