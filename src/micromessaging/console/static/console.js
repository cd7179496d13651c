// The micromessaging console page: queues, workers, methods, calls and dead letters.
//
// Everything shown comes from the broker and the services, so none of it is trusted: every
// node is built with createElement and filled with textContent (never innerHTML), and no
// data ever becomes an attribute that a browser would run or follow. The server's CSP
// allows this file and console.css only.
"use strict";

const state = {
  csrf: null,
  interval: 1000,
  selected: decodeURIComponent(location.hash.slice(1)) || null,
  queues: new Map(), // queue name -> its row in the queues table
  deadSeen: null, // the selected queue's dead-letter count in the last snapshot
  methods: [],
  snapshot: null, // the last one shown
};

const $ = (id) => document.getElementById(id);

// An element with properties and children; a child that is not a Node becomes a text node.
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key === "type" || key === "title") node.setAttribute(key, value);
    else throw new Error(`h(): ${key} is not set from data`);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

class ApiError extends Error {
  constructor(message, kind, status) {
    super(message);
    this.kind = kind;
    this.status = status;
  }
}

// GET (no body) or POST (a body) to the console's JSON API.
async function api(path, body) {
  const options = { credentials: "same-origin", cache: "no-store", headers: { accept: "application/json" } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["content-type"] = "application/json";
    options.headers["x-mm-csrf"] = state.csrf;
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = data && data.error ? data.error : { message: `${response.status} ${response.statusText}` };
    if (response.status === 401) showProblem("The console session ended: reload the page.");
    throw new ApiError(error.message, error.kind, response.status);
  }
  return data;
}

function showProblem(text) {
  const problem = $("problem");
  problem.textContent = text || "";
  problem.hidden = !text;
}

// --- formatting --------------------------------------------------------------------------

function count(value) {
  return value === null || value === undefined ? "–" : value.toLocaleString("en-US");
}

function rate(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? value.toFixed(1) : value.toFixed(0);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size * 2) return `${Math.round(seconds / size)}${unit}`;
  }
  return `${Math.round(seconds)}s`;
}

function when(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleString("en-GB", { hour12: false });
}

// --- queues ------------------------------------------------------------------------------

const QUEUE_FIELDS = [
  ["depth", (q) => count(q.depth)],
  ["oldest", (q) => age(q.oldest_wait)],
  ["in-flight", (q) => count(q.in_flight)],
  ["dead", (q) => count(q.dead_letters)],
  ["rate", (q) => rate(q.calls_per_second)],
  ["workers", (q) => count(q.workers.length)],
];

function queueRow(name) {
  const cells = QUEUE_FIELDS.map(([field]) => h("td", { class: "number", data: { field } }));
  const button = h("button", { type: "button", class: "link", onclick: () => select(name) }, name);
  return h("tr", { data: { queue: name } }, h("td", {}, button), cells);
}

function renderQueues(snapshot) {
  const body = $("queues").tBodies[0];
  const seen = new Set();
  for (const queue of snapshot.queues) {
    seen.add(queue.queue);
    let row = state.queues.get(queue.queue);
    if (!row) {
      row = queueRow(queue.queue);
      state.queues.set(queue.queue, row);
    }
    body.append(row); // moves it into the snapshot's (sorted) order
    for (const [field, show] of QUEUE_FIELDS) {
      row.querySelector(`[data-field="${field}"]`).textContent = show(queue);
    }
    row.classList.toggle("selected", queue.queue === state.selected);
  }
  for (const [name, row] of state.queues) {
    if (!seen.has(name)) {
      row.remove();
      state.queues.delete(name);
    }
  }
  $("no-queues").hidden = snapshot.queues.length > 0;
}

// --- the selected queue ------------------------------------------------------------------

function select(name) {
  state.selected = name;
  state.deadSeen = null;
  history.replaceState(null, "", `#${encodeURIComponent(name)}`);
  $("detail-queue").textContent = name;
  $("detail").hidden = false;
  $("call-outcome").textContent = "";
  $("call-output").textContent = "";
  $("dead-status").textContent = "";
  for (const [queue, row] of state.queues) row.classList.toggle("selected", queue === name);
  if (state.snapshot) renderDetail(state.snapshot); // its workers now, not at the next refresh
  loadMethods();
  loadDeadLetters();
}

function renderDetail(snapshot) {
  if (!state.selected) return;
  const queue = snapshot.queues.find((q) => q.queue === state.selected);
  const workers = queue ? queue.workers : [];
  const now = snapshot.at;
  $("workers").tBodies[0].replaceChildren(
    ...workers.map((w) =>
      h(
        "tr",
        { data: { worker: w.id } },
        h("td", {}, h("code", {}, w.id)),
        h("td", {}, w.host),
        h("td", { class: "number" }, String(w.pid)),
        h("td", { class: "number" }, `${w.in_flight}/${w.concurrency}`),
        h("td", { class: "number" }, count(w.completed)),
        h("td", { class: "number" }, count(w.failed)),
        h("td", { class: "number" }, rate(w.calls_per_second)),
        h("td", { class: "number" }, age(now - w.started)),
        h("td", { class: "number" }, `${age(now - w.last_seen)} ago`),
      ),
    ),
  );
  $("no-workers").hidden = workers.length > 0;
  $("notes").replaceChildren(...(queue ? queue.notes : []).map((note) => h("li", {}, note)));
  const dead = queue ? queue.dead_letters : 0;
  $("replay-all").disabled = !dead;
  $("purge-all").disabled = !dead;
  if (state.deadSeen !== null && dead !== state.deadSeen) loadDeadLetters();
  state.deadSeen = dead;
}

async function loadMethods() {
  const queue = state.selected;
  $("methods-status").textContent = "asking the service (rpc.discover)…";
  let described;
  try {
    described = await api(`api/methods?queue=${encodeURIComponent(queue)}`);
  } catch (error) {
    if (queue !== state.selected) return;
    $("methods-status").textContent = `methods unknown: ${error.message}`;
    $("methods").replaceChildren();
    fillMethodChoice([]);
    return;
  }
  if (queue !== state.selected) return;
  state.methods = described.methods;
  const title = described.title ? `service ${described.title}, ` : "";
  $("methods-status").textContent = `${title}${described.methods.length} methods`;
  $("methods").replaceChildren(
    ...described.methods.map((m) =>
      h(
        "article",
        { class: "method", data: { method: m.name } },
        h("code", { class: "signature" }, m.signature),
        " ",
        h("button", { type: "button", class: "small", onclick: () => chooseMethod(m.name) }, "Call…"),
        m.description ? h("pre", {}, m.description) : null,
      ),
    ),
  );
  fillMethodChoice(described.methods);
}

function fillMethodChoice(methods) {
  const choice = $("call-method");
  choice.replaceChildren(
    ...methods.map((m) => {
      const option = h("option", {}, m.name);
      option.value = m.name;
      return option;
    }),
  );
  if (methods.length) chooseMethod(methods[0].name, false);
}

// Select `name` in the call form, with a params skeleton from its signature.
function chooseMethod(name, focus = true) {
  const method = state.methods.find((m) => m.name === name);
  $("call-method").value = name;
  let skeleton = [];
  if (method && method.params.length) {
    skeleton =
      method.paramStructure === "by-position"
        ? method.params.map(() => null)
        : Object.fromEntries(method.params.map((param) => [param, null]));
  }
  $("call-params").value = JSON.stringify(skeleton);
  if (focus) $("call-params").focus();
}

async function call(event) {
  event.preventDefault();
  const outcome = $("call-outcome");
  const output = $("call-output");
  let params;
  try {
    params = JSON.parse($("call-params").value || "null");
  } catch (error) {
    outcome.className = "error";
    outcome.textContent = `params are not JSON: ${error.message}`;
    output.textContent = "";
    return;
  }
  const method = $("call-method").value;
  outcome.className = "";
  outcome.textContent = `calling ${method}…`;
  output.textContent = "";
  $("call-submit").disabled = true;
  try {
    const answer = await api("api/call", { queue: state.selected, method, params });
    const reply = answer.reply;
    const ms = `${answer.ms.toFixed(1)} ms`;
    if (reply && "error" in reply) {
      outcome.className = "error";
      outcome.textContent = `error ${reply.error.code} ${reply.error.message} (${ms})`;
      output.textContent = JSON.stringify(reply.error, null, 2);
    } else {
      outcome.className = "ok";
      outcome.textContent = `result (${ms})`;
      output.textContent = JSON.stringify(reply ? reply.result : null, null, 2);
    }
  } catch (error) {
    outcome.className = "error";
    outcome.textContent = `${error.kind || "error"}: ${error.message}`;
  } finally {
    $("call-submit").disabled = false;
  }
}

// --- dead letters ------------------------------------------------------------------------

async function loadDeadLetters() {
  const queue = state.selected;
  let answer;
  try {
    answer = await api(`api/dead-letters?queue=${encodeURIComponent(queue)}`);
  } catch (error) {
    if (queue === state.selected) $("dead-status").textContent = `dead letters unknown: ${error.message}`;
    return;
  }
  if (queue !== state.selected) return;
  $("dead-letters").tBodies[0].replaceChildren(
    ...answer.records.map((record) =>
      h(
        "tr",
        { data: { id: record.id } },
        h("td", {}, h("code", {}, record.id)),
        h("td", {}, when(record.at)),
        h("td", { class: "number" }, String(record.deliveries)),
        h("td", {}, record.method === null ? "?" : h("code", {}, record.method)),
        h("td", {}, record.reason),
        h("td", {}, h("pre", {}, "body" in record ? record.body : `(not UTF-8) ${record.body_base64}`)),
        h(
          "td",
          {},
          h("button", { type: "button", class: "small replay", onclick: () => replay([record.id]) }, "Replay"),
          " ",
          h("button", { type: "button", class: "small danger purge", onclick: () => purge([record.id]) }, "Purge"),
        ),
      ),
    ),
  );
}

// Ask in the page; resolves true when the person confirmed.
function ask(text, action) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = action;
  dialog.showModal();
  return new Promise((resolve) => {
    const done = (answer) => () => {
      $("confirm-ok").onclick = $("confirm-cancel").onclick = dialog.oncancel = null;
      dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = done(true);
    $("confirm-cancel").onclick = done(false);
    dialog.oncancel = done(false);
  });
}

function letters(ids) {
  if (ids) return ids.length === 1 ? `dead letter ${ids[0]}` : `${ids.length} dead letters`;
  return state.deadSeen ? `all ${state.deadSeen} dead letters` : "all dead letters";
}

async function replay(ids) {
  const queue = state.selected;
  if (!(await ask(`Put ${letters(ids)} of ${queue} back on the queue? They run again.`, "Replay"))) return;
  await act("api/replay", { queue, ids }, (answer) => `replayed ${answer.replayed.length}`);
}

async function purge(ids) {
  const queue = state.selected;
  if (!(await ask(`Delete ${letters(ids)} of ${queue} for good?`, "Purge"))) return;
  await act("api/purge", { queue, ids }, (answer) => `purged ${answer.purged}`);
}

async function act(path, body, say) {
  const status = $("dead-status");
  try {
    status.textContent = say(await api(path, body));
  } catch (error) {
    status.textContent = `${error.kind || "error"}: ${error.message}`;
  }
  await loadDeadLetters();
}

// --- the feed ----------------------------------------------------------------------------

async function poll() {
  try {
    const snapshot = await api("api/status");
    state.interval = Math.max(200, snapshot.interval * 1000);
    $("updated").textContent = `updated ${new Date(snapshot.at * 1000).toLocaleTimeString("en-GB")}`;
    showProblem(snapshot.error ? `The broker: ${snapshot.error}` : "");
    state.snapshot = snapshot;
    renderQueues(snapshot);
    renderDetail(snapshot);
    document.body.dataset.generation = snapshot.generation;
  } catch (error) {
    if (error.status !== 401) showProblem(`The console server: ${error.message}`);
  }
  setTimeout(poll, state.interval);
}

async function start() {
  $("call-form").addEventListener("submit", call);
  $("methods-reload").addEventListener("click", loadMethods);
  $("dead-reload").addEventListener("click", loadDeadLetters);
  $("replay-all").addEventListener("click", () => replay(null));
  $("purge-all").addEventListener("click", () => purge(null));
  $("logout").addEventListener("click", async () => {
    await api("api/logout", {}).catch(() => null);
    location.reload();
  });
  const session = await api("api/session");
  state.csrf = session.csrf;
  $("broker").textContent = session.broker;
  if (session.login) {
    $("who").textContent = `logged in as ${session.who}`;
    $("logout").hidden = false;
  }
  if (state.selected) select(state.selected);
  poll();
}

start().catch((error) => showProblem(`The console could not start: ${error.message}`));
