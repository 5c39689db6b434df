// The mcp-tasks dashboard: polls /dashboard/api/* every second and redraws.
// Every value a client sent (task ids, tool names, messages, questions) goes
// into the page through textContent, never as markup.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  let selected = new URLSearchParams(location.search).get("task");

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function ageText(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function progressText(task) {
    if (task.progress === undefined || task.progress === null) return "";
    const total = task.total;
    return total === undefined || total === null
      ? String(task.progress)
      : task.progress + "/" + total;
  }

  function questionText(question) {
    let text = String(question.message || question.method || "");
    const schema = question.requestedSchema;
    if (schema && typeof schema === "object" && schema.properties) {
      const names = Object.keys(schema.properties);
      if (names.length) text += " [" + names.join(", ") + "]";
    }
    return text;
  }

  function taskCell(task) {
    const td = el("td", "task");
    const link = el("a", "task-link", task.taskId);
    link.href = "/dashboard?task=" + encodeURIComponent(task.taskId);
    link.dataset.taskId = task.taskId;
    td.append(link);
    return td;
  }

  function progressCell(task) {
    const td = el("td", "progress");
    if (task.progress !== undefined && task.progress !== null && task.total) {
      const bar = el("progress");
      bar.max = task.total;
      bar.value = task.progress;
      td.append(bar, " ");
    }
    td.append(el("span", "", progressText(task)));
    return td;
  }

  function cancelButton(task, label) {
    const button = el("button", "cancel", label);
    button.type = "button";
    button.dataset.taskId = task.taskId;
    return button;
  }

  function cancelCell(task) {
    const td = el("td");
    if (!TERMINAL.has(task.status)) td.append(cancelButton(task, "Cancel"));
    return td;
  }

  function row(task, cells) {
    const tr = el("tr");
    tr.dataset.taskId = task.taskId;
    tr.append(...cells);
    return tr;
  }

  function fill(tableId, rows, columns, emptyText) {
    const body = document.querySelector("#" + tableId + " tbody");
    if (!rows.length) {
      const tr = el("tr", "empty");
      const td = el("td", "", emptyText);
      td.colSpan = columns;
      tr.append(td);
      rows = [tr];
    }
    body.replaceChildren(...rows);
  }

  function renderOverview(data) {
    document.getElementById("updated").textContent = data.at;
    fill("clients", data.clients.map((c) => {
      const tr = el("tr");
      tr.append(el("td", "client", c.client), el("td", "queued", c.queued),
        el("td", "running", c.running), el("td", "waiting", c.inputRequired),
        el("td", "oldest", ageText(c.oldestQueuedAgeSeconds)),
        el("td", "concurrency", c.concurrency));
      return tr;
    }), 6, "no client has work");
    fill("processes", data.processes.map((p) => {
      const tr = el("tr");
      tr.append(el("td", "holder", p.holder), el("td", "running", p.running));
      return tr;
    }), 2, "no process runs a task");
    fill("active", data.active.map((t) => row(t, [
      taskCell(t), el("td", "client", t.client), el("td", "tool", t.tool),
      el("td", "phase", t.phase), progressCell(t),
      el("td", "message", t.statusMessage), el("td", "age", ageText(t.ageSeconds)),
      cancelCell(t),
    ])), 8, "nothing queued or running");
    fill("waiting", data.waiting.map((t) => row(t, [
      taskCell(t), el("td", "client", t.client), el("td", "tool", t.tool),
      el("td", "question", t.questions.map(questionText).join("; ")),
      el("td", "age", ageText(t.ageSeconds)), cancelCell(t),
    ])), 6, "no task waits for input");
    fill("finished", data.finished.map((t) => row(t, [
      taskCell(t), el("td", "client", t.client), el("td", "tool", t.tool),
      el("td", "status", t.status), el("td", "message", t.statusMessage),
      el("td", "age", ageText(t.ageSeconds)),
    ])), 6, "nothing finished yet");
  }

  function renderDetail(task, missingId) {
    const panel = document.getElementById("detail");
    panel.hidden = false;
    if (!task) {
      panel.replaceChildren(el("p", "missing", "No task " + missingId + "."));
      return;
    }
    const title = el("h2", "", "Task ");
    const code = el("code", "", task.taskId);
    code.id = "detail-id";
    title.append(code);
    const fields = el("dl");
    for (const [name, value] of [
      ["Status", task.status], ["Client", task.client], ["Tool", task.tool],
      ["Progress", progressText(task)], ["Message", task.statusMessage],
      ["Created", task.createdAt], ["Updated", task.lastUpdatedAt],
    ]) {
      fields.append(el("dt", "", name), el("dd", name.toLowerCase(), value));
    }
    const actions = el("p");
    if (!TERMINAL.has(task.status)) actions.append(cancelButton(task, "Cancel this task"));
    const timeline = el("ol");
    timeline.id = "timeline";
    for (const ev of task.events) {
      const item = el("li");
      item.append(el("time", "", ev.at), " ", el("span", "kind", ev.kind), " ",
        el("span", "status", ev.status), " ", el("span", "reason", ev.reason || ""),
        " ", el("span", "by", ev.by || ""), " ",
        el("span", "message", ev.statusMessage || ""));
      timeline.append(item);
    }
    const questions = el("ul");
    questions.id = "questions";
    for (const q of task.questions) {
      questions.append(el("li", "", questionText(q) + (q.open ? "" : " (answered)")));
    }
    panel.replaceChildren(title, fields, actions, el("h3", "", "Timeline"), timeline);
    if (task.questions.length) panel.append(el("h3", "", "Questions"), questions);
  }

  function problem(text) {
    document.getElementById("problem").textContent = text;
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    return { ok: response.ok, status: response.status, body };
  }

  async function refresh() {
    try {
      const overview = await getJSON("/dashboard/api/overview");
      if (!overview.ok) throw new Error(overview.body.message || "HTTP " + overview.status);
      renderOverview(overview.body);
      if (selected) {
        const task = await getJSON("/dashboard/api/task?id=" + encodeURIComponent(selected));
        if (task.ok) renderDetail(task.body);
        else if (task.status === 404) renderDetail(null, selected);
        else throw new Error(task.body.message || "HTTP " + task.status);
      }
      problem("");
    } catch (error) {
      problem("not updating: " + error.message);
    }
  }

  async function cancel(taskId, button) {
    button.disabled = true;
    try {
      const response = await fetch("/dashboard/api/cancel", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ taskId }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        problem("cancel refused: " + (body.message || "HTTP " + response.status));
      }
    } catch (error) {
      problem("cancel failed: " + error.message);
    }
    await refresh();
  }

  document.addEventListener("click", (event) => {
    const target = event.target;
    if (!(target instanceof Element)) return;
    const button = target.closest("button.cancel");
    if (button) {
      cancel(button.dataset.taskId, button);
      return;
    }
    const link = target.closest("a.task-link");
    if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
      event.preventDefault();
      selected = link.dataset.taskId;
      history.pushState(null, "", link.href);
      refresh();
    }
  });

  async function loop() {
    await refresh();
    setTimeout(loop, POLL_MS);
  }
  setTimeout(loop, POLL_MS);
})();
