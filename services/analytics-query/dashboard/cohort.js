// The cohort page: pick a course, then learners × notebook problems, sortable, refreshed live.
"use strict";
(function () {
  const { el, get, time, message, withToken, poll } = window.LT;
  const SYMBOL = { passed: "✓", failed: "✗", not_run: "○", unanswered: "–", manual: "?", none: "·" };
  const LABEL = { passed: "passed", failed: "failed", not_run: "not run", unanswered: "unanswered", manual: "needs manual grading", none: "no snapshot" };
  let data = null;
  let sort = { key: "learner", dir: 1 };
  let lastText = "";

  const failRate = (r) => (r.rubyRuns > 0 ? r.rubyFailed / r.rubyRuns : 0);
  const KEYS = {
    learner: (r) => (r.name || r.learner).toLowerCase(),
    completion: (r) => r.completion,
    last: (r) => r.lastActivity || 0,
    runs: (r) => r.rubyRuns,
    failure: failRate,
  };

  function header() {
    const sortButton = (key, text) => {
      const b = el("button", { type: "button", "data-sort": key, text });
      b.addEventListener("click", () => {
        sort = { key, dir: sort.key === key ? -sort.dir : 1 };
        render();
      });
      const th = el("th", { scope: "col" }, b);
      if (sort.key === key) th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
      return th;
    };
    const row = el("tr", {},
      sortButton("learner", "Learner"),
      sortButton("completion", "Completion"),
      sortButton("last", "Last activity"),
      sortButton("runs", "Ruby runs"),
      sortButton("failure", "Failure rate"));
    for (const p of data.problems) row.append(el("th", { scope: "col", "data-problem": p, text: p }));
    return row;
  }

  function render() {
    const table = document.getElementById("cohort-table");
    const rows = data.rows.slice().sort((a, b) => {
      const x = KEYS[sort.key](a), y = KEYS[sort.key](b);
      return (x < y ? -1 : x > y ? 1 : 0) * sort.dir;
    });
    const body = document.createDocumentFragment();
    for (const r of rows) {
      const link = el("a", { href: "/learners/" + encodeURIComponent(r.learner), text: r.name || r.learner });
      const tr = el("tr", { "data-learner": r.learner },
        el("th", { scope: "row", class: "learner" }, link),
        el("td", { class: "num completion", "data-value": String(r.completion), text: Math.round(r.completion * 100) + "% (" + r.passed + "/" + data.problems.length + ")" }),
        el("td", { class: "last", "data-value": String(r.lastActivity || ""), text: time(r.lastActivity) }),
        el("td", { class: "num runs", "data-value": String(r.rubyRuns), text: String(r.rubyRuns) }),
        el("td", { class: "num failure", "data-value": String(failRate(r)), text: r.rubyRuns > 0 ? Math.round(failRate(r) * 100) + "%" : "—" }));
      r.statuses.forEach((s, i) => {
        tr.append(el("td", { class: "cell " + s, "data-problem": data.problems[i], "data-status": s, title: data.problems[i] + ": " + LABEL[s], "aria-label": LABEL[s], text: SYMBOL[s] }));
      });
      body.append(tr);
    }
    table.tHead.replaceChildren(header());
    table.tBodies[0].replaceChildren(body);
    document.getElementById("cohort-title").textContent = data.course + " · " + data.rows.length + " learners · " + data.problems.length + " problems" + (data.names ? "" : " · pseudonyms");
    document.getElementById("cohort").hidden = false;
    requestAnimationFrame(() => { performance.mark("cohort-table"); document.body.dataset.painted = "cohort"; });
  }

  async function loadCohort(course) {
    const next = await get("/api/v1/dashboard/cohorts/" + encodeURIComponent(course));
    const text = JSON.stringify(next);
    if (text === lastText) return;
    lastText = text; data = next;
    render();
  }

  async function start() {
    let me;
    try { me = await get("/api/v1/dashboard/courses"); } catch (err) { window.LT.report(err); return; }
    if (me.role === "student") {
      location.replace("/learners/" + encodeURIComponent(me.sub));
      return;
    }
    const list = document.getElementById("course-list");
    list.replaceChildren(...me.courses.map((c) => el("option", { value: c })));
    const form = document.getElementById("course-form");
    form.hidden = false;
    const input = document.getElementById("course");
    const params = new URLSearchParams(location.search);
    const chosen = params.get("course") || (me.courses.length === 1 ? me.courses[0] : "");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      location.search = "?course=" + encodeURIComponent(input.value.trim());
    });
    if (!chosen) { message(me.courses.length ? "Pick a course." : "No course has learners yet."); return; }
    input.value = chosen;
    poll(() => loadCohort(chosen), window.LT.REFRESH_MS);
  }

  withToken(start);
})();
