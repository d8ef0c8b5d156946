// Draws the dashboard's charts from the JSON feed and keeps them live by polling it.
(function () {
  "use strict";
  const script = document.getElementById("dashboard-script");
  const pollMs = Number(script.dataset.pollMs) || 3000;
  const windowSelect = document.getElementById("window");
  const charts = {};
  const COLORS = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4"];

  const usd = (v) => "$" + Number(v).toFixed(6);
  const ms = (v) => (v === null || v === undefined ? "-" : Number(v).toFixed(1) + " ms");
  const pct = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%");
  const utc = (ts) => new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";

  function setText(id, text) {
    const el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function chart(id, config) {
    // Update in place: re-creating a chart every poll would flicker and leak canvases.
    const existing = charts[id];
    if (existing) {
      existing.data.labels = config.data.labels;
      existing.data.datasets = config.data.datasets;
      existing.update();
      return existing;
    }
    config.options = Object.assign(
      { animation: false, responsive: true, maintainAspectRatio: false },
      config.options || {}
    );
    charts[id] = new Chart(document.getElementById(id), config);
    return charts[id];
  }

  function fillTable(id, rows) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren(
      ...rows.map((cells) => {
        const tr = document.createElement("tr");
        for (const c of cells) {
          const td = document.createElement("td");
          td.textContent = c;
          tr.appendChild(td);
        }
        return tr;
      })
    );
  }

  function render(data) {
    const t = data.traffic;
    setText("updated-at", utc(data.now));
    setText("total-requests", String(t.requests));
    const spend = document.getElementById("total-spend");
    spend.textContent = usd(t.spend_usd);
    spend.dataset.usd = String(t.spend_usd);
    setText("total-errors", String(t.errors));
    setText("cache-hits", String(t.cache_hits));
    setText("latency-p50", ms(t.latency_p50_ms));
    setText("latency-p95", ms(t.latency_p95_ms));
    setText("policy-version", data.policy.version);
    setText("policy-loaded-at", utc(data.policy.loaded_at));
    const policyError = document.getElementById("policy-error");
    policyError.hidden = !data.policy.last_reload_error;
    policyError.querySelector("span").textContent = data.policy.last_reload_error || "";

    const models = t.models.map((m) => m.model);
    chart("chart-models", {
      type: "bar",
      data: {
        labels: models,
        datasets: [
          { label: "requests", data: t.models.map((m) => m.requests), backgroundColor: COLORS[0] },
          { label: "errors", data: t.models.map((m) => m.errors), backgroundColor: COLORS[3] },
          { label: "cache hits", data: t.models.map((m) => m.cache_hits), backgroundColor: COLORS[2] },
        ],
      },
    });
    chart("chart-latency", {
      type: "bar",
      data: {
        labels: models,
        datasets: [
          { label: "p50 ms", data: t.models.map((m) => m.latency_p50_ms), backgroundColor: COLORS[0] },
          { label: "p95 ms", data: t.models.map((m) => m.latency_p95_ms), backgroundColor: COLORS[1] },
        ],
      },
    });
    const tl = t.timeline;
    chart("chart-timeline", {
      type: "line",
      data: {
        labels: tl.requests.map((_, i) => utc(tl.start + i * tl.bucket_s).slice(11, 16)),
        datasets: [
          { label: "requests", data: tl.requests, borderColor: COLORS[0], yAxisID: "y" },
          { label: "spend (USD)", data: tl.spend_usd, borderColor: COLORS[1], yAxisID: "y1" },
        ],
      },
      options: {
        scales: {
          y: { beginAtZero: true, position: "left" },
          y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } },
        },
      },
    });

    const b = data.budgets;
    document.getElementById("budgets-empty").hidden = b.length > 0;
    document.getElementById("budgets-box").hidden = b.length === 0;
    if (b.length > 0) {
      chart("chart-budgets", {
        type: "bar",
        data: {
          labels: b.map((r) => r.kind + " " + r.name),
          datasets: [
            { label: "spent %", data: b.map((r) => (r.spent_fraction || 0) * 100), backgroundColor: COLORS[0] },
            { label: "planned %", data: b.map((r) => (r.planned_fraction === null ? null : r.planned_fraction * 100)), backgroundColor: COLORS[1] },
          ],
        },
        options: { indexAxis: "y", scales: { x: { beginAtZero: true, suggestedMax: 100 } } },
      });
    }
    fillTable("budgets-table", b.map((r) => [
      r.kind, r.name, r.period, usd(r.spent_usd), usd(r.reserved_usd), usd(r.budget_usd),
      pct(r.spent_fraction), pct(r.planned_fraction),
      r.price_multiplier === null ? "-" : r.price_multiplier.toFixed(3),
    ]));
    fillTable("models-table", t.models.map((m) => [
      m.model, m.requests, m.errors, usd(m.spend_usd), m.cache_hits,
      ms(m.latency_p50_ms), ms(m.latency_p95_ms),
    ]));
    fillTable("apis-table", t.apis.map((a) => [a.api, a.requests, a.errors, usd(a.spend_usd)]));
    fillTable("replicas-table", (t.replicas || []).map((r) => [
      r.replica, r.requests, r.errors, usd(r.spend_usd), ms(r.latency_p50_ms), ms(r.latency_p95_ms),
    ]));
    const eps = data.endpoints || [];
    document.getElementById("endpoints-empty").hidden = eps.length > 0;
    const num = (v) => (v === null || v === undefined ? "-" : String(v));
    fillTable("endpoints-table", eps.map((e) => [
      e.model, e.endpoint, e.usable ? "yes" : "no", e.outstanding, e.metrics,
      num(e.running), num(e.waiting), pct(e.kv_cache_usage), pct(e.prefix_cache_hit_rate),
    ]));
    document.body.dataset.renderedAt = String(data.now);
  }

  async function poll() {
    try {
      const resp = await fetch("/dashboard/data.json?window=" + encodeURIComponent(windowSelect.value), {
        credentials: "same-origin",
        cache: "no-store",
      });
      if (resp.status === 401) {
        window.location = "/dashboard/login?next=/dashboard";
        return;
      }
      if (resp.ok) render(await resp.json());
    } catch (err) {
      console.warn("dashboard poll failed", err);
    }
  }

  render(JSON.parse(document.getElementById("initial-data").textContent));
  windowSelect.addEventListener("change", poll);
  setInterval(poll, pollMs);
})();
