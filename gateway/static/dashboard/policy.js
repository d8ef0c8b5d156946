// The policy page: validate and apply the edited YAML, roll back to an earlier version.
(function () {
  "use strict";
  const text = document.getElementById("policy-text");
  const who = document.getElementById("policy-who");
  const status = document.getElementById("policy-status");
  const problems = document.getElementById("policy-problems");
  const diffBox = document.getElementById("policy-diff-box");

  function show(message, ok) {
    status.textContent = message;
    status.className = ok ? "ok" : "error";
  }

  function showProblems(list) {
    problems.hidden = !list || list.length === 0;
    problems.textContent = (list || []).map((p) => p.text).join("\n");
  }

  async function post(path, body) {
    const resp = await fetch("/dashboard/policy/" + path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    let data = {};
    try {
      data = await resp.json();
    } catch (err) {
      data = { error: { message: "HTTP " + resp.status } };
    }
    return { status: resp.status, data };
  }

  function needWho() {
    if (who.value.trim()) return false;
    show("Type your name first: every applied version records who made it.", false);
    who.focus();
    return true;
  }

  async function validate() {
    show("validating...", true);
    const { data } = await post("validate", { text: text.value });
    showProblems(data.problems);
    const changes = data.diff || [];
    diffBox.hidden = !data.ok;
    document.getElementById("policy-diff").textContent = changes.length
      ? changes.join("\n")
      : "No change from the serving policy.";
    if (data.ok) show(data.changed ? "valid" : "valid (same as the serving policy)", true);
    else show(data.error ? data.error.message : "invalid: see the problems below", false);
  }

  async function applied(result) {
    const { status: code, data } = result;
    showProblems(data.problems);
    if (code === 200 && data.ok) {
      document.getElementById("policy-version").textContent = data.version;
      diffBox.hidden = true;  // the edit is now the serving policy
      await refreshHistory();
      show("applied: v" + data.id + " (" + data.version + ") is serving", true);
    } else {
      show((data.error && data.error.message) || "HTTP " + code, false);
    }
  }

  async function apply() {
    if (needWho()) return;
    show("applying...", true);
    await applied(await post("apply", { text: text.value, who: who.value }));
  }

  async function rollback(id) {
    if (needWho()) return;
    show("rolling back to v" + id + "...", true);
    await applied(await post("rollback", { id: Number(id), who: who.value }));
  }

  function cell(tr, content, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (content instanceof Node) td.appendChild(content);
    else td.textContent = content;
    tr.appendChild(td);
  }

  function rollbackButton(id) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "rollback";
    button.dataset.id = String(id);
    button.textContent = "Roll back to v" + id;
    button.addEventListener("click", () => rollback(id));
    return button;
  }

  async function refreshHistory() {
    const resp = await fetch("/dashboard/policy/history.json", { credentials: "same-origin" });
    if (!resp.ok) return;
    const rows = (await resp.json()).data;
    const isMaster = document.getElementById("policy-form").dataset.master === "1";
    document.querySelector("#history-table tbody").replaceChildren(
      ...rows.map((v) => {
        const tr = document.createElement("tr");
        tr.dataset.id = String(v.id);
        tr.dataset.version = v.version;
        cell(tr, "v" + v.id + (v.live ? " (live)" : ""));
        const code = document.createElement("code");
        code.textContent = v.version;
        cell(tr, code);
        cell(tr, new Date(v.ts * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC");
        cell(tr, v.who, "who");
        cell(tr, v.client);
        cell(tr, v.note, "note");
        cell(tr, !v.live && isMaster ? rollbackButton(v.id) : "");
        return tr;
      })
    );
  }

  document.getElementById("policy-validate").addEventListener("click", validate);
  document.getElementById("policy-apply").addEventListener("click", apply);
  for (const button of document.querySelectorAll("button.rollback")) {
    button.addEventListener("click", () => rollback(Number(button.dataset.id)));
  }
})();
