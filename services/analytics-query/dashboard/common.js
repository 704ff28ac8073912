// Shared by both pages: the token (from the URL fragment or the form, kept in sessionStorage),
// authorised JSON requests, a DOM helper, polling.
"use strict";
(function () {
  const KEY = "learntrail.token";
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem(KEY, hash.get("token"));
    hash.delete("token");
    const rest = hash.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function message(text, isError) {
    const m = document.getElementById("message");
    m.textContent = text || "";
    m.className = isError ? "error" : "";
  }

  class HttpError extends Error {
    constructor(status, text) { super(text); this.status = status; }
  }

  async function get(path) {
    const token = sessionStorage.getItem(KEY);
    const r = await fetch(path, { headers: { authorization: "Bearer " + token } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new HttpError(r.status, (body.error && body.error.message) || body.message || r.statusText);
    return body;
  }

  function time(ms) {
    if (ms === null || ms === undefined || ms === "") return "—";
    const d = typeof ms === "number" ? new Date(ms) : new Date(ms);
    return isNaN(d) ? "—" : d.toISOString().replace("T", " ").slice(0, 16) + "Z";
  }

  // Asks for a token when none is kept, then calls start(); offers to forget it.
  function withToken(start) {
    const form = document.getElementById("token-form");
    const out = document.getElementById("sign-out");
    out.addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
    if (sessionStorage.getItem(KEY)) { out.hidden = false; start(); return; }
    form.hidden = false;
    message("Paste an access token (make up prints an instructor's).");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, document.getElementById("token-input").value.trim());
      form.hidden = true; out.hidden = false; message("");
      start();
    });
  }

  // Calls load() now and again `ms` after each answer while the page is visible (never two at
  // once); after a server or network failure it tries again within a second. Counts refreshes on
  // <body>.
  function poll(load, ms) {
    let count = 0;
    let failed = false;
    let reported = "";
    const run = async () => {
      let wait = ms;
      if (!document.hidden) {
        try {
          await load();
          count += 1; document.body.dataset.refreshes = String(count);
          // clears only the failure this poll reported (a page may report its own, e.g. 403)
          if (failed) {
            failed = false;
            if (document.body.dataset.error === reported) { message(""); delete document.body.dataset.error; }
          }
        } catch (err) {
          report(err); failed = true; reported = document.body.dataset.error;
          if (!err.status || err.status >= 500) wait = Math.min(ms, 1000);
        }
      }
      setTimeout(run, wait);
    };
    run();
  }

  function report(err) {
    if (err.status === 401) message("This token is not accepted (" + err.message + "). Forget it and paste another.", true);
    else if (err.status === 403) message("Not allowed: " + err.message + ".", true);
    else message("Cannot load: " + err.message, true);
    document.body.dataset.error = String(err.status || "network");
  }

  window.LT = { el, get, time, message, withToken, poll, report, REFRESH_MS: 3000 };
})();
