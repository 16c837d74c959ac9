/* tesp-api dashboard: plain DOM code calling the TES API (docs/dashboard.md).
 *
 * Every value on screen comes from task submitters, who are untrusted: it is only ever put in the
 * page with textContent / DOM nodes, never as HTML. The server's Content-Security-Policy allows no
 * inline script either.
 */
"use strict";

(function () {
  const body = document.body;
  const ROOT = body.dataset.root || "";
  const API = body.dataset.api || ROOT + "/ga4gh/tes/v1";
  const DASH = ROOT + "/dashboard";
  const FINAL = new Set(["COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"]);
  const CANCELABLE = new Set(["QUEUED", "INITIALIZING", "RUNNING", "PAUSED"]);
  const TABLE_REFRESH_MS = 5000;
  const TASK_REFRESH_MS = 3000;
  const AUTH_KEY = "tesp-api.dashboard.auth";

  const $ = (id) => document.getElementById(id);
  let config = { auth_modes: [] };
  let me = null; // {user, admin}
  let timer = null;
  // Paging: tokens[i] is the page_token of page i (tokens[0] = "" is the first page).
  let tokens = [""];
  let pageIndex = 0;
  let nextToken = "";

  // --- helpers ---------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function show(message, isError) {
    const box = $("message");
    box.textContent = message || "";
    box.hidden = !message;
    box.classList.toggle("error", Boolean(isError));
  }

  function base64(text) {
    const bytes = new TextEncoder().encode(text);
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary);
  }

  function savedAuth() {
    try {
      return JSON.parse(sessionStorage.getItem(AUTH_KEY) || "null");
    } catch (e) {
      return null;
    }
  }

  function authHeaders() {
    const auth = savedAuth();
    if (!auth) return {};
    if (auth.kind === "basic") return { Authorization: "Basic " + auth.value };
    if (auth.kind === "bearer") return { Authorization: "Bearer " + auth.value };
    return {};
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function call(method, url, params) {
    const query = new URLSearchParams();
    for (const [key, value] of params || []) if (value !== "" && value !== undefined) query.append(key, value);
    const full = query.toString() ? url + "?" + query.toString() : url;
    const response = await fetch(full, {
      method,
      headers: { Accept: "application/json", ...authHeaders() },
      credentials: "same-origin",
    });
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const msg = data && typeof data.msg === "string" ? data.msg : response.statusText;
      throw new ApiError(response.status, msg);
    }
    return data;
  }

  function handleError(error) {
    if (error instanceof ApiError && error.status === 401) {
      showLogin("Sign in to see your tasks.");
      return;
    }
    show(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error), true);
  }

  function fmtTime(value) {
    if (!value) return "";
    const t = new Date(value);
    if (Number.isNaN(t.getTime())) return value;
    return t.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || ms < 0 || Number.isNaN(ms)) return "";
    const s = Math.round(ms / 1000);
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  /** Start to end of the task's run (to now while it runs); empty if it never started. */
  function duration(task) {
    const log = (task.logs || [])[0] || {};
    const start = Date.parse(log.start_time || "");
    if (Number.isNaN(start)) return "";
    const end = log.end_time ? Date.parse(log.end_time) : FINAL.has(task.state) ? NaN : Date.now();
    return fmtDuration(end - start);
  }

  function stateBadge(state) {
    return el("span", { class: `state state-${String(state || "UNKNOWN").toLowerCase()}` }, state || "UNKNOWN");
  }

  function navigate(path) {
    history.pushState(null, "", path);
    route();
  }

  async function cancelTask(id) {
    if (!window.confirm(`Cancel task ${id}?`)) return false;
    try {
      await call("POST", `${API}/tasks/${encodeURIComponent(id)}:cancel`);
      show(`Task ${id} canceled.`);
      return true;
    } catch (error) {
      handleError(error);
      return false;
    }
  }

  // --- sign-in ---------------------------------------------------------------------------------

  function showLogin(message) {
    stopTimer();
    for (const id of ["tasks-view", "task-view", "service-view"]) $(id).hidden = true;
    $("login").hidden = false;
    $("basic-form").hidden = !config.auth_modes.includes("basic");
    $("prompt-sign-in").hidden = !config.auth_modes.includes("basic");
    $("token-form").hidden = !config.auth_modes.includes("oidc");
    show(message || "", false);
  }

  async function loadMe() {
    me = await call("GET", `${DASH}/api/whoami`);
    $("who").textContent = me.user ? `${me.user}${me.admin ? " (admin)" : ""}` : config.auth_modes.length ? "" : "no authentication";
    $("sign-out").hidden = !savedAuth();
    $("sign-in").hidden = true;
    body.classList.toggle("admin", Boolean(me.admin && config.auth_modes.length));
  }

  function signedIn(auth) {
    sessionStorage.setItem(AUTH_KEY, JSON.stringify(auth));
    $("login").hidden = true;
    show("");
    start();
  }

  $("basic-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    signedIn({ kind: "basic", value: base64(`${form.username.value}:${form.password.value}`) });
    form.password.value = "";
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    signedIn({ kind: "bearer", value: form.token.value.trim() });
    form.token.value = "";
  });

  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(AUTH_KEY);
    me = null;
    $("who").textContent = "";
    $("sign-out").hidden = true;
    showLogin("Signed out. (A login typed into the browser's own prompt lasts until the browser is closed.)");
  });

  $("sign-in").addEventListener("click", () => showLogin(""));

  // The browser's own Basic dialog: asked for by whoami?prompt=1 (the only answer of this service
  // page that challenges); the browser then keeps the login for this site until it is closed.
  $("browser-sign-in").addEventListener("click", async () => {
    sessionStorage.removeItem(AUTH_KEY);
    try {
      await call("GET", `${DASH}/api/whoami`, [["prompt", "1"]]);
    } catch (error) {
      show(error instanceof ApiError && error.status === 401 ? "Not signed in." : String(error), true);
      return;
    }
    $("login").hidden = true;
    show("");
    start();
  });

  // --- task table ------------------------------------------------------------------------------

  function filterParams() {
    const form = $("filters");
    const params = [
      ["view", "BASIC"],
      ["page_size", form.page_size.value],
      ["state", form.state.value],
      ["name_prefix", form.name_prefix.value.trim()],
    ];
    const tag = form.tag.value.trim();
    if (tag) {
      const at = tag.indexOf("=");
      params.push(["tag_key", at < 0 ? tag : tag.slice(0, at)]);
      if (at >= 0) params.push(["tag_value", tag.slice(at + 1)]);
    }
    return params;
  }

  function filtersToUrl() {
    const form = $("filters");
    const query = new URLSearchParams();
    for (const name of ["state", "name_prefix", "tag"]) if (form[name].value) query.set(name, form[name].value);
    const text = query.toString();
    history.replaceState(null, "", DASH + (text ? "?" + text : ""));
  }

  function filtersFromUrl() {
    const query = new URLSearchParams(location.search);
    const form = $("filters");
    for (const name of ["state", "name_prefix", "tag"]) form[name].value = query.get(name) || "";
  }

  async function loadTable() {
    const params = filterParams();
    const token = tokens[pageIndex];
    if (token) params.push(["page_token", token]);
    let page;
    try {
      page = await call("GET", `${API}/tasks`, params);
    } catch (error) {
      handleError(error);
      return;
    }
    const tasks = page.tasks || [];
    nextToken = page.next_page_token || "";
    let owners = {};
    if (me && me.admin && config.auth_modes.length && tasks.length) {
      try {
        owners = await call("GET", `${DASH}/api/owners`, tasks.map((t) => ["id", t.id]));
      } catch (error) {
        owners = {};
      }
    }
    const rows = tasks.map((task) => {
      const link = el("a", { href: `${DASH}/tasks/${encodeURIComponent(task.id)}`, "data-nav": true }, task.id);
      const cancel = CANCELABLE.has(task.state)
        ? el("button", {
            type: "button",
            class: "cancel",
            title: "Cancel this task",
            onclick: async () => {
              if (await cancelTask(task.id)) loadTable();
            },
          }, "Cancel")
        : null;
      return el("tr", { dataset: { taskId: task.id, state: task.state } },
        el("td", { class: "id" }, link),
        el("td", { class: "name" }, task.name || ""),
        el("td", {}, stateBadge(task.state)),
        el("td", { class: "created", title: task.creation_time || "" }, fmtTime(task.creation_time)),
        el("td", { class: "duration" }, duration(task)),
        el("td", { class: "owner-col" }, owners[task.id] || ""),
        el("td", { class: "actions" }, cancel),
      );
    });
    clear($("tasks").tBodies[0]).append(...rows);
    $("empty").hidden = rows.length > 0;
    $("page-no").textContent = `Page ${pageIndex + 1}`;
    $("prev-page").disabled = pageIndex === 0;
    $("first-page").disabled = pageIndex === 0;
    $("next-page").disabled = !nextToken;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function resetPaging() {
    tokens = [""];
    pageIndex = 0;
  }

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    resetPaging();
    filtersToUrl();
    loadTable();
  });
  $("filters").state.addEventListener("change", () => {
    resetPaging();
    filtersToUrl();
    loadTable();
  });
  $("filters").page_size.addEventListener("change", () => {
    resetPaging();
    loadTable();
  });
  $("filters").auto.addEventListener("change", () => scheduleTable());
  $("next-page").addEventListener("click", () => {
    if (!nextToken) return;
    tokens = tokens.slice(0, pageIndex + 1);
    tokens.push(nextToken);
    pageIndex += 1;
    loadTable();
  });
  $("prev-page").addEventListener("click", () => {
    if (pageIndex > 0) pageIndex -= 1;
    loadTable();
  });
  $("first-page").addEventListener("click", () => {
    resetPaging();
    loadTable();
  });

  function stopTimer() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  function scheduleTable() {
    stopTimer();
    if ($("filters").auto.checked) timer = setInterval(() => {
      if (!document.hidden) loadTable();
    }, TABLE_REFRESH_MS);
  }

  // --- task page -------------------------------------------------------------------------------

  function kv(list, pairs) {
    clear(list);
    for (const [key, value] of pairs) {
      if (value === undefined || value === null || value === "") continue;
      list.append(el("dt", {}, key), el("dd", {}, value));
    }
  }

  function rowsInto(table, rows) {
    const tbody = clear(table.tBodies[0]);
    if (!rows.length) {
      const cols = table.tHead.rows[0].cells.length;
      tbody.append(el("tr", {}, el("td", { colspan: cols, class: "hint" }, "none")));
      return;
    }
    tbody.append(...rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c)))));
  }

  function logBlock(title, text) {
    const lines = (text || "").split("\n");
    const shown = lines.length > 200 ? ["[... earlier lines not shown ...]", ...lines.slice(-200)].join("\n") : text || "";
    return el("div", { class: "stream" }, el("h4", {}, title), el("pre", { class: "log" }, shown || "(empty)"));
  }

  function renderTask(task) {
    $("task-title").textContent = task.name || task.id;
    $("task-state").replaceWith(Object.assign(stateBadge(task.state), { id: "task-state" }));
    $("task-cancel").hidden = !CANCELABLE.has(task.state);
    const log = (task.logs || [])[0] || {};
    const tags = Object.entries(task.tags || {}).map(([k, v]) => (v ? `${k}=${v}` : k)).join(", ");
    const resources = task.resources
      ? Object.entries(task.resources).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ")
      : "";
    kv($("task-summary"), [
      ["ID", task.id],
      ["State", task.state],
      ["Name", task.name],
      ["Description", task.description],
      ["Created", fmtTime(task.creation_time)],
      ["Started", fmtTime(log.start_time)],
      ["Ended", fmtTime(log.end_time)],
      ["Duration", duration(task)],
      ["Tags", tags],
      ["Resources", resources],
      ["Volumes", (task.volumes || []).join(", ")],
    ]);
    rowsInto($("task-executors"), (task.executors || []).map((ex, i) => [
      String(i),
      ex.image,
      el("code", {}, (ex.command || []).join(" ")),
      ex.workdir || "",
      Object.keys(ex.env || {}).join(", "),
    ]));
    rowsInto($("task-inputs"), (task.inputs || []).map((inp) => [
      inp.path,
      inp.url || (inp.content !== undefined ? "(inline content)" : ""),
      inp.type || "FILE",
    ]));
    rowsInto($("task-outputs"), (task.outputs || []).map((out) => [out.path, out.url, out.type || "FILE"]));

    const executorLogs = clear($("executor-logs"));
    const logs = log.logs || [];
    if (!logs.length) executorLogs.append(el("p", { class: "hint" }, "No executor has run yet."));
    logs.forEach((exLog, i) => {
      const image = ((task.executors || [])[i] || {}).image || "";
      executorLogs.append(el("section", { class: "executor-log", dataset: { executor: String(i) } },
        el("h3", {}, `Executor ${i}${image ? " (" + image + ")" : ""}`),
        el("p", { class: "hint" },
          `exit code ${exLog.exit_code}`,
          exLog.start_time ? ` · started ${fmtTime(exLog.start_time)}` : "",
          exLog.end_time ? ` · ended ${fmtTime(exLog.end_time)}` : ""),
        logBlock("stdout (tail)", exLog.stdout),
        logBlock("stderr (tail)", exLog.stderr),
      ));
    });
    rowsInto($("output-logs"), (log.outputs || []).map((o) => [o.path, o.url, o.size_bytes]));
    $("system-logs").textContent = (log.system_logs || []).join("\n") || "(none)";
    $("task-json").textContent = JSON.stringify(task, null, 2);
  }

  let currentTaskId = null;

  async function loadTask(id) {
    let task;
    try {
      task = await call("GET", `${API}/tasks/${encodeURIComponent(id)}`, [["view", "FULL"]]);
    } catch (error) {
      handleError(error);
      return;
    }
    renderTask(task);
    stopTimer();
    if (!FINAL.has(task.state)) timer = setTimeout(() => {
      if (currentTaskId === id) loadTask(id);
    }, TASK_REFRESH_MS);
  }

  $("task-cancel").addEventListener("click", async () => {
    if (currentTaskId && (await cancelTask(currentTaskId))) loadTask(currentTaskId);
  });

  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll("[data-tab]")) other.setAttribute("aria-selected", String(other === tab));
      for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== tab.dataset.tab;
    });
  }

  // --- service info ----------------------------------------------------------------------------

  async function loadService() {
    let info;
    try {
      info = await call("GET", `${API}/service-info`);
    } catch (error) {
      handleError(error);
      return;
    }
    const org = info.organization || {};
    const type = info.type || {};
    kv($("service-info"), [
      ["Name", info.name],
      ["ID", info.id],
      ["Description", info.description],
      ["Version", info.version],
      ["Type", `${type.group || ""}:${type.artifact || ""}:${type.version || ""}`],
      ["Organization", [org.name, org.url].filter(Boolean).join(" · ")],
      ["Environment", info.environment],
      ["Contact", info.contactUrl],
      ["Documentation", info.documentationUrl],
      ["Storage", (info.storage || []).join(", ")],
      ["Backend parameters", (info.tesResources_backend_parameters || []).join(", ")],
      ["Sign-in", config.auth_modes.length ? config.auth_modes.join(", ") : "none (everybody is an administrator)"],
    ]);
    let servers = [];
    try {
      servers = await call("GET", `${DASH}/api/pulsar`);
    } catch (error) {
      servers = [];
    }
    rowsInto($("pulsar-servers"), servers.map((s) => [
      s.name,
      s.transport,
      el("span", { class: `health health-${s.health}` }, s.health),
      s.last_contact ? new Date(s.last_contact * 1000).toLocaleString() : "",
    ]));
  }

  // --- routing ---------------------------------------------------------------------------------

  function route() {
    stopTimer();
    show("");
    const path = location.pathname.slice(DASH.length).replace(/\/+$/, "");
    for (const id of ["tasks-view", "task-view", "service-view", "login"]) $(id).hidden = true;
    const taskMatch = path.match(/^\/tasks\/([^/]+)$/);
    if (taskMatch) {
      currentTaskId = decodeURIComponent(taskMatch[1]);
      $("task-view").hidden = false;
      loadTask(currentTaskId);
    } else if (path === "/service") {
      currentTaskId = null;
      $("service-view").hidden = false;
      loadService();
    } else {
      currentTaskId = null;
      $("tasks-view").hidden = false;
      filtersFromUrl();
      loadTable();
      scheduleTable();
    }
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-nav]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
  });
  window.addEventListener("popstate", route);

  async function start() {
    try {
      await loadMe();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        const tried = savedAuth();
        sessionStorage.removeItem(AUTH_KEY);
        showLogin(tried ? "Those credentials were not accepted." : "Sign in to see your tasks.");
        $("sign-in").hidden = true;
        return;
      }
      handleError(error);
      return;
    }
    route();
  }

  (async function boot() {
    try {
      config = await call("GET", `${DASH}/api/config`);
    } catch (error) {
      show(`Cannot reach the service: ${error.message}`, true);
      return;
    }
    start();
  })();
})();
