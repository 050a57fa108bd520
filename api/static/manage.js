// /manage, live: follows GET /events (Server-Sent Events) and sends the page's forms with fetch.
// Record data only ever reaches the page through textContent and attribute setters, never as HTML.
(function () {
  "use strict";

  const table = document.getElementById("notebooks");
  if (!table) return;
  const tbody = table.tBodies[0];
  const emptyRow = tbody.querySelector("tr.empty");
  const countEl = document.getElementById("count");
  const liveEl = document.getElementById("live");
  const errorEl = document.getElementById("live-error");
  const flashEl = document.getElementById("flash");
  const cfg = table.dataset;
  const filters = { user: cfg.filterUser || "", status: cfg.filterStatus || "" };
  const killable = new Set((cfg.killable || "").split(",").filter(Boolean));
  const stages = (cfg.stages || "").split(",").filter(Boolean);
  // Statuses only move forward along this order (FAILED and REMOVED both end it).
  const RANK = { PENDING: 0, STARTING: 1, ACTIVE: 2, DELETING: 3, FAILED: 4, REMOVED: 4 };

  // -- messages -------------------------------------------------------------------------
  let flashTimer = null;
  function flash(text) {
    flashEl.textContent = text;
    flashEl.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { flashEl.hidden = true; }, 6000);
  }
  function showError(text) {
    errorEl.textContent = text;
    errorEl.setAttribute("role", "alert");
    errorEl.hidden = false;
  }
  function clearError() {
    errorEl.hidden = true;
    errorEl.textContent = "";
    errorEl.removeAttribute("role");
  }
  function setLive(state, text) {
    liveEl.hidden = false;
    liveEl.dataset.state = state;
    liveEl.textContent = text;
  }

  // -- rows -------------------------------------------------------------------------------
  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v;
      else if (k === "className") node.className = v;
      else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(c));
    return node;
  }

  function age(startTime) {
    const started = Date.parse(startTime);
    if (Number.isNaN(started)) return "";
    let s = Math.max(0, Math.floor((Date.now() - started) / 1000));
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (s >= size) return Math.floor(s / size) + unit;
    }
    return s + "s";
  }

  function cell(label, children, className) {
    const td = el("td", label ? { "data-label": label } : {}, children);
    if (className) td.className = className;
    return td;
  }

  function fillRow(tr, rec) {
    tr.dataset.hostname = rec.hostname;
    tr.dataset.user = rec.user;
    tr.dataset.status = rec.status;
    tr.dataset.updated = rec.updated_at || "";
    // The address to open: with the notebook's token for its owner and admins (notebook_url, in
    // answers and in ready events), else PUBLIC_URL's address; a later event without one keeps it.
    tr.dataset.link = rec.notebook_url || tr.dataset.link || rec.public_url || "";
    const url = rec.status === "ACTIVE" && tr.dataset.link
      ? el("a", { href: tr.dataset.link, target: "_blank", rel: "noopener noreferrer", text: rec.url })
      : el("span", { className: "muted", text: rec.url });
    const badge = el("span", { className: "badge s-" + rec.status, text: rec.status });
    const status = [badge, el("span", { className: "stage" })];
    if (rec.error) {
      badge.title = rec.error;
      status.push(el("details", { className: "error" }, [
        el("summary", { text: "why" }), el("span", { className: "error-text", text: rec.error }),
      ]));
    }
    const actions = [];
    if (killable.has(rec.status)) {
      const form = el("form", { className: "kill", method: "post",
        action: cfg.kill.replace("HOSTNAME", encodeURIComponent(rec.hostname)) },
      [el("button", { type: "submit", className: "danger", text: "Kill" })]);
      actions.push(form);
    }
    tr.replaceChildren(
      cell("Hostname", [el("code", { text: rec.hostname })]),
      cell("URL", [url]),
      cell("Image", [document.createTextNode(rec.image)], "image"),
      cell("User", [document.createTextNode(rec.user)]),
      cell("Status", status, "status"),
      cell("Age", [el("time", { datetime: rec.start_time, title: "started " + rec.start_time,
        text: age(rec.start_time) })]),
      cell("Node", [document.createTextNode(rec.node || "–")]),
      cell("", actions, "actions"),
    );
    tr.classList.remove("changed");
    void tr.offsetWidth; // restart the highlight animation
    tr.classList.add("changed");
  }

  function matches(rec) {
    return (!filters.user || rec.user === filters.user) && (!filters.status || rec.status === filters.status);
  }

  function rows() {
    return tbody.querySelectorAll("tr[id^='nb-']");
  }

  function refreshCount() {
    const n = rows().length;
    countEl.textContent = String(n);
    emptyRow.hidden = n > 0;
  }

  // Newer than what the row shows? Replies and events can cross (a kill's reply after REMOVED).
  function newer(tr, rec) {
    const was = RANK[tr.dataset.status], now = RANK[rec.status];
    if (was === undefined || now === undefined) return true;
    if (now !== was) return now > was;
    return (rec.updated_at || "") >= (tr.dataset.updated || "");
  }

  function upsert(rec) {
    if (!rec || typeof rec.hostname !== "string") return;
    let tr = document.getElementById("nb-" + rec.hostname);
    if (tr && !newer(tr, rec)) return;
    if (!matches(rec)) {
      if (tr) tr.remove();
      refreshCount();
      return;
    }
    if (!tr) {
      tr = el("tr", { id: "nb-" + rec.hostname });
      tbody.insertBefore(tr, tbody.firstChild);
    }
    fillRow(tr, rec);
    refreshCount();
  }

  function progress(data) {
    const tr = document.getElementById("nb-" + data.hostname);
    if (!tr || !(tr.dataset.status === "PENDING" || tr.dataset.status === "STARTING")) return;
    const stage = tr.querySelector(".stage");
    if (stage) stage.textContent = data.message;
  }

  setInterval(() => {
    tbody.querySelectorAll("time[datetime]").forEach((t) => { t.textContent = age(t.getAttribute("datetime")); });
  }, 15000);

  // -- forms ------------------------------------------------------------------------------
  // With authentication on, every request through the session cookie needs the session's CSRF
  // token, reads too (api/auth.py): the cookie also reaches anything else on this host (another
  // port), the token only this page. Empty with AUTH off.
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";

  function jsonHeaders() {
    const headers = { Accept: "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    return headers;
  }

  async function send(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: jsonHeaders(),
      body: body,
      credentials: "same-origin",
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      throw new Error((data && data.error) || response.status + " " + response.statusText);
    }
    return data;
  }

  document.getElementById("spawn").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.currentTarget;
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const rec = await send(form.action, new URLSearchParams(new FormData(form)));
      clearError();
      upsert(rec);
      flash("spawning " + rec.hostname + (matches(rec) ? "" : " (hidden by the filters)"));
      form.elements.image.focus();
    } catch (e) {
      showError("Could not spawn: " + e.message);
    } finally {
      button.disabled = false;
    }
  });

  // Leave empty filters out of the query string (?user=alice rather than ?user=alice&status=).
  document.getElementById("filters").addEventListener("submit", (ev) => {
    Array.from(ev.currentTarget.elements).forEach((field) => {
      if (field.name && !field.value) field.disabled = true;
    });
  });
  window.addEventListener("pageshow", () => {  // coming back through the history: usable again
    Array.from(document.getElementById("filters").elements).forEach((field) => { field.disabled = false; });
  });

  tbody.addEventListener("submit", async (ev) => {
    const form = ev.target.closest("form.kill");
    if (!form) return;
    ev.preventDefault();
    const hostname = form.closest("tr").dataset.hostname;
    if (!window.confirm("Kill " + hostname + "? Its container is stopped and removed.")) return;
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const rec = await send(form.action, null);
      clearError();
      upsert(rec);
      flash(hostname + " is " + rec.status);
    } catch (e) {
      showError("Could not kill " + hostname + ": " + e.message);
      button.disabled = false;
    }
  });

  // -- live updates ---------------------------------------------------------------------------
  let source = null;
  let opened = false;
  let lostTimer = null;

  // After a reconnect, changes made while away were not streamed: read the list once.
  async function resync() {
    const params = new URLSearchParams({ limit: "500" });
    if (filters.user) params.set("user", filters.user);
    if (filters.status) params.set("status", filters.status);
    try {
      const response = await fetch(cfg.list + "?" + params, { headers: jsonHeaders() });
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      const records = await response.json();
      records.reverse().forEach(upsert);
    } catch (e) {
      showError("Could not reload the list: " + e.message);
    }
  }

  function onEvent(ev) {
    let data;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    if (data.record) upsert(Object.assign({}, data.record, { public_url: data.public_url, notebook_url: data.notebook_url }));
    else progress(data);
  }

  // An EventSource cannot send headers: the stream takes the CSRF token as ?csrf= (and only the streams do).
  const eventsUrl = csrf ? cfg.events + "?" + new URLSearchParams({ csrf: csrf }) : cfg.events;

  function connect() {
    source = new EventSource(eventsUrl);
    stages.forEach((stage) => source.addEventListener(stage, onEvent));
    source.addEventListener("open", () => {
      clearTimeout(lostTimer);
      clearError();
      setLive("on", "live");
      if (opened) resync();
      opened = true;
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused the stream (e.g. 503 while Redis is away): the browser gives up, we retry.
        setLive("off", "offline");
        showError("Live updates are unavailable (the server refused the event stream); retrying in 5 s.");
        source.close();
        setTimeout(connect, 5000);
        return;
      }
      // The browser reconnects by itself (the stream also ends every few minutes on purpose).
      setLive("wait", "reconnecting…");
      clearTimeout(lostTimer);
      lostTimer = setTimeout(() => {
        showError("Live updates interrupted; reconnecting… The table may be out of date.");
      }, 5000);
    });
  }

  setLive("wait", "connecting…");
  connect();
})();
