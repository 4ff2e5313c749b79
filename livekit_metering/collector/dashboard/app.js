// LiveKit metering dashboard: plain JavaScript, no dependencies, no network beyond this collector.
// Money arrives as decimal strings; it is shown exactly as given (never through binary floats),
// and sums are done on BigInt fixed-point so a day's total is exact too.
"use strict";

const params = new URLSearchParams(location.search);
const API = new URL("../", location.href); // the dashboard lives at /dashboard/, the API at /v1/
const LINK_HINT = "open a fresh dashboard link (python examples/collector_postgres/dashboard_link.py <collector URL>)";

const RESOURCE_LABELS = {
  agent_session: "Agent session",
  connection: "WebRTC connection",
  data_transfer: "Data transfer",
  stt: "STT",
  llm_input: "LLM input",
  llm_input_cached: "LLM cached input",
  llm_output: "LLM output",
  tts: "TTS",
  observability_event: "Observability events",
  recorded_audio: "Recorded audio",
  sip_inbound: "Inbound calls",
  sip_inbound_toll_free: "Toll-free calls",
  sip_trunk: "SIP trunk",
  transcode: "Recording / export",
  transcode_audio: "Audio recording",
  track_egress: "Track egress",
  stream_import: "Stream import",
  voice_isolation: "Voice isolation",
  phone_number: "Phone numbers",
  phone_number_toll_free: "Toll-free numbers",
  realtime_input_text: "Realtime text input",
  realtime_input_audio: "Realtime audio input",
  realtime_input_image: "Realtime image input",
  realtime_input_cached_text: "Realtime cached text input",
  realtime_input_cached_audio: "Realtime cached audio input",
  realtime_input_cached_image: "Realtime cached image input",
  realtime_output_text: "Realtime text output",
  realtime_output_audio: "Realtime audio output",
  realtime_session: "Realtime session",
  transcription_input: "Transcription input",
  transcription_output: "Transcription output",
};
// One colour per resource, the same in every chart: blues for time, orange for the LLM, green for TTS.
const RESOURCE_COLORS = {
  agent_session: "#1f6feb",
  connection: "#54aeff",
  stt: "#8250df",
  llm_input: "#e16f24",
  llm_input_cached: "#f5b07a",
  llm_output: "#a8400a",
  tts: "#2da44e",
  data_transfer: "#0fb5ae",
  observability_event: "#bf3989",
  recorded_audio: "#d4a72c",
};
const COLORS = ["#768390", "#57606a", "#9a6700", "#cf222e", "#116329", "#0a3069"];
const RESOURCE_ORDER = Object.keys(RESOURCE_LABELS);

// ---- exact decimals -------------------------------------------------------------------------------
const SCALE = 18;
const ONE = 10n ** BigInt(SCALE);

function plainDecimal(text) {
  // Accept "1.5", "-2", and exponent forms such as "1E-7" by shifting the point.
  let s = String(text).trim();
  const m = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(s);
  if (!m) return null;
  let [, sign, int, frac = "", exp = "0"] = m;
  let digits = (int || "0") + frac;
  let point = (int || "0").length + parseInt(exp, 10);
  if (point <= 0) { digits = "0".repeat(1 - point) + digits; point = 1; }
  if (point > digits.length) digits = digits + "0".repeat(point - digits.length);
  int = digits.slice(0, point).replace(/^0+(?=\d)/, "");
  frac = digits.slice(point);
  return { neg: sign === "-", int, frac };
}

function toFixed(text) {
  if (text === null || text === undefined || text === "") return null;
  const d = plainDecimal(text);
  if (!d) return null;
  const frac = (d.frac + "0".repeat(SCALE)).slice(0, SCALE);
  const v = BigInt(d.int) * ONE + BigInt(frac);
  return d.neg ? -v : v;
}

function fromFixed(v) {
  const neg = v < 0n;
  if (neg) v = -v;
  const frac = (v % ONE).toString().padStart(SCALE, "0").replace(/0+$/, "");
  return (neg ? "-" : "") + (v / ONE).toString() + (frac ? "." + frac : "");
}

function sumDecimals(values) {
  let total = 0n;
  for (const v of values) { const f = toFixed(v); if (f !== null) total += f; }
  return fromFixed(total);
}

function groupDigits(int) { return int.replace(/\B(?=(\d{3})+(?!\d))/g, ","); }

// "$1,234.5678": every digit the API gave, at least two decimal places, no rounding.
function usd(text) {
  if (text === null || text === undefined || text === "") return "unpriced";
  const d = plainDecimal(text);
  if (!d) return String(text);
  let frac = d.frac.replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  const zero = /^0*$/.test(d.int + d.frac);
  return (d.neg && !zero ? "−$" : "$") + groupDigits(d.int) + "." + frac;
}

function qty(text) {
  if (text === null || text === undefined || text === "") return "";
  const d = plainDecimal(text);
  if (!d) return String(text);
  const frac = d.frac.replace(/0+$/, "");
  return (d.neg ? "−" : "") + groupDigits(d.int) + (frac ? "." + frac : "");
}

const asNumber = (text) => Number(text) || 0; // for chart geometry only, never for displayed money

// ---- helpers ------------------------------------------------------------------------------------------
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "title") node.title = v;
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c));
  return node;
}

const label = (resource) => RESOURCE_LABELS[resource] || resource;
const SESSION_LIMIT = 500;
const customerLabel = (key) => (!key || key === "(none)" ? "Unattributed" : key);
const agentLabel = (key) => (!key || key === "(none)" ? "Unnamed agent" : key);
const modelLabel = (key) => (!key || key === "(none)" ? "Platform (no model)" : key);
const colorOf = (resource) => {
  if (RESOURCE_COLORS[resource]) return RESOURCE_COLORS[resource];
  const i = RESOURCE_ORDER.indexOf(resource);
  return COLORS[(i < 0 ? resource.length : i) % COLORS.length];
};
const PLURAL = { minute: "minutes", second: "seconds", token: "tokens", character: "characters", event: "events", month: "months" };
const unitText = (quantity, unit) => (String(quantity).replace(/\.0*$/, "") === "1" ? unit : PLURAL[unit] || unit);
const resourceRank = (r) => { const i = RESOURCE_ORDER.indexOf(r); return i < 0 ? 999 : i; };

function setStatus(text, kind = "") {
  const s = $("#status");
  s.textContent = text;
  s.className = "status " + kind;
}

async function api(path, query = {}) {
  const url = new URL(path.replace(/^\//, ""), API);
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  const resp = await fetch(url, { headers: { Accept: "application/json" } }); // the session cookie signs it
  return answer(resp);
}

// Sign-in: a dashboard link carries a short-lived read token in its #fragment, which the browser never
// sends to a server (nor in a Referer). It is exchanged once for an HttpOnly session cookie, and taken
// out of the address bar.
async function signIn() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!token) return;
  history.replaceState(null, "", location.pathname + location.search);
  await answer(await fetch(new URL("session", location.href), { method: "POST", headers: { Authorization: `Bearer ${token}` } }));
}

async function answer(resp) {
  if (!resp.ok) {
    let detail = "";
    try { detail = (await resp.json()).error || ""; } catch (_) { /* not JSON */ }
    const err = new Error(`${resp.status} ${detail || resp.statusText}`.trim());
    err.status = resp.status;
    throw err;
  }
  return resp.json();
}

// A download through fetch (signed by the session cookie), saved under the collector's file name.
async function download(path, query, fallbackName) {
  const url = new URL(path.replace(/^\//, ""), API);
  for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${resp.status} ${resp.statusText}`);
  const disposition = resp.headers.get("Content-Disposition") || "";
  const name = (/filename="([^"]+)"/.exec(disposition) || [])[1] || fallbackName;
  const link = el("a", { href: URL.createObjectURL(await resp.blob()), download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

function monthRange(month) {
  const [y, m] = month.split("-").map(Number);
  const since = new Date(Date.UTC(y, m - 1, 1));
  const until = new Date(Date.UTC(y, m, 1));
  const iso = (d) => d.toISOString().replace(".000Z", "Z");
  const days = [];
  for (let d = new Date(since); d < until; d = new Date(d.getTime() + 86400000)) days.push(d.toISOString().slice(0, 10));
  return { since: iso(since), until: iso(until), days };
}

// Sum usage rows per key: {key: {total, parts: {resource: cost}, unpriced}}, exact. A row's cost is the
// priced part of its usage; its "unpriced" list names what has no price (never counted as $0).
function byKey(rows) {
  const out = new Map();
  for (const row of rows) {
    const key = row.key ?? "";
    if (!out.has(key)) out.set(key, { costs: [], parts: new Map(), unpriced: false });
    const entry = out.get(key);
    if (row.unpriced?.length) entry.unpriced = true;
    entry.costs.push(row.cost);
    entry.parts.set(row.resource, sumDecimals([entry.parts.get(row.resource) || "0", row.cost]));
  }
  for (const entry of out.values()) entry.total = sumDecimals(entry.costs);
  return out;
}

// ---- renderers ----------------------------------------------------------------------------------------
function renderDayChart(usage, days) {
  const box = $("#chart-day");
  box.replaceChildren();
  const totals = byKey(usage.rows);
  const resources = [...new Set(usage.rows.map((r) => r.resource))].sort(
    (a, b) => resourceRank(a) - resourceRank(b),
  );
  const W = 860, H = 300, left = 64, right = 12, top = 14, bottom = 30;
  const max = Math.max(0, ...days.map((d) => asNumber(totals.get(d)?.total)));
  const step = niceStep(max / 4 || 1);
  const ceiling = Math.max(step * 4, step * Math.ceil(max / step));
  const y = (v) => top + (H - top - bottom) * (1 - v / ceiling);
  const band = (W - left - right) / days.length;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Cost by day" });
  for (let t = 0; t <= ceiling + step / 2; t += step) {
    chart.append(svg("line", { x1: left, x2: W - right, y1: y(t), y2: y(t), class: "grid-line" }));
    chart.append(svg("text", { x: left - 8, y: y(t) + 4, class: "axis", "text-anchor": "end" }, tickLabel(t, step)));
  }
  days.forEach((day, i) => {
    const x = left + i * band;
    const entry = totals.get(day);
    const g = svg("g", { class: "day", "data-day": day, "data-total": entry ? entry.total : "0" });
    let base = 0;
    for (const resource of resources) {
      const part = entry?.parts.get(resource);
      if (!part) continue;
      const v = asNumber(part);
      const h = y(base) - y(base + v);
      g.append(svg("rect", { x: x + band * 0.16, width: band * 0.68, y: y(base + v), height: Math.max(h, 0), fill: colorOf(resource) }));
      base += v;
    }
    g.append(svg("rect", { x, y: top, width: band, height: H - top - bottom, class: "hit" }));
    g.append(svg("title", {}, `${day}: ${usd(entry ? entry.total : "0")}` + (entry?.unpriced ? " + unpriced usage" : "")));
    chart.append(g);
    const dayNum = Number(day.slice(8));
    if (dayNum === 1 || dayNum % 5 === 0) {
      chart.append(svg("text", { x: x + band / 2, y: H - 10, class: "axis", "text-anchor": "middle" }, day.slice(5).replace("-", "/")));
    }
  });
  chart.append(svg("line", { x1: left, x2: W - right, y1: y(0), y2: y(0), class: "base-line" }));
  box.append(chart);
  $("#legend").replaceChildren(
    ...resources.map((r) => {
      const swatch = el("i");
      swatch.style.background = colorOf(r);
      return el("span", { class: "key" }, swatch, label(r));
    }),
  );
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function tickLabel(v, step) {
  const places = step >= 1 ? 0 : Math.min(6, Math.ceil(-Math.log10(step)));
  return "$" + v.toFixed(places);
}

function renderBars(container, usage, labelOf) {
  const box = $(container);
  const totals = [...byKey(usage.rows).entries()].sort((a, b) => asNumber(b[1].total) - asNumber(a[1].total));
  const max = Math.max(0, ...totals.map(([, e]) => asNumber(e.total)));
  if (!totals.length) { box.replaceChildren(el("p", { class: "empty" }, "No usage in this month.")); return; }
  box.replaceChildren(
    ...totals.map(([key, entry]) => {
      const width = max > 0 ? (100 * asNumber(entry.total)) / max : 0;
      const color = container === "#by-resource" ? colorOf(key) : "var(--accent)";
      const bar = el("div", { class: "fill" });
      bar.style.width = `${Math.max(width, entry.total === "0" ? 0 : 0.8)}%`;
      bar.style.background = color;
      return el(
        "div",
        { class: "bar", "data-key": key },
        el("div", { class: "name", title: key }, labelOf(key)),
        el("div", { class: "track" }, bar),
        el("div", { class: "amount" + (entry.unpriced ? " unpriced" : "") }, amountText(entry)),
      );
    }),
  );
}

// A group whose usage is partly or wholly unpriced shows its priced part and says so: unknown models
// are never shown as $0, and never hide what is priced.
function amountText(entry) {
  return entry.unpriced ? `${usd(entry.total)} + unpriced` : usd(entry.total);
}

function costText(item) {
  return item.unpriced?.length ? `${usd(item.cost)} + unpriced` : usd(item.cost);
}

function renderSessions(sessions, onPick) {
  const body = $("#sessions tbody");
  if (!sessions.length) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 9, class: "empty" }, "No sessions in this month.")));
    return;
  }
  body.replaceChildren(
    ...sessions.map((s) => {
      const row = el(
        "tr",
        { "data-session": s.session_id, tabIndex: 0 },
        el("td", { class: "mono" }, when(s.start)),
        el("td", { class: "mono", title: s.session_id }, s.session_id),
        el("td", {}, s.room || ""),
        el("td", {}, s.agent_name || ""),
        el("td", {}, s.customer || ""),
        el("td", {}, el("span", { class: `badge ${s.state}` }, s.state || "")),
        el("td", { class: "num", "data-field": "minutes" }, qty(s.billed_minutes)),
        el("td", { class: "num" }, String(s.records ?? "")),
        el("td", { class: "num", "data-field": "cost", title: (s.unpriced || []).join(", ") }, costText(s)),
      );
      row.addEventListener("click", () => onPick(s, row));
      row.addEventListener("keydown", (e) => { if (e.key === "Enter") onPick(s, row); });
      return row;
    }),
  );
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/(\.\d+)?Z$/, "").slice(0, 19) : "";
}

const BASE_UNITS = {
  agent_session: "ms", connection: "ms", stt: "ms", recorded_audio: "ms", data_transfer: "bytes",
  llm_input: "tokens", llm_input_cached: "tokens", llm_output: "tokens", tts: "chars", observability_event: "events",
  realtime_session: "ms",
};

function measured(r) {
  const base = BASE_UNITS[r.resource] || (r.unit === "token" ? "tokens" : undefined);
  if (base === "ms" || (!base && r.unit === "minute") || (!base && r.unit === "second")) {
    return `${(Number(r.raw) / 1000).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 3 })} s`;
  }
  return `${groupDigits(String(r.raw))} ${base || ""}`.trim();
}

async function showSession(session, row) {
  document.querySelectorAll("#sessions tr.selected").forEach((r) => r.classList.remove("selected"));
  row.classList.add("selected");
  const card = $("#session-detail");
  card.hidden = false;
  $("#detail-id").textContent = session.session_id;
  $("#detail-meta").replaceChildren(
    ...[
      ["Room", session.room], ["Agent", session.agent_name], ["Customer", session.customer],
      ["Started", when(session.start) + " UTC"], ["Ended", session.end ? when(session.end) + " UTC" : "open"],
      ["End cause", session.end_cause], ["Billed minutes", qty(session.billed_minutes)],
    ].filter(([, v]) => v).map(([k, v]) => el("span", {}, el("b", {}, k + " "), v)),
  );
  const body = $("#session-records tbody");
  body.replaceChildren(el("tr", {}, el("td", { colSpan: 8, class: "empty" }, "Loading…")));
  try {
    const data = await api(`/v1/sessions/${encodeURIComponent(session.session_id)}/records`);
    const records = [...data.records].sort((a, b) => resourceRank(a.resource) - resourceRank(b.resource) || (a.start < b.start ? -1 : 1));
    body.replaceChildren(
      ...records.map((r) =>
        el(
          "tr",
          { "data-record": r.id },
          el("td", {}, el("i", { class: "dot" }), label(r.resource)),
          el("td", {}, r.model || ""),
          el("td", {}, el("span", { class: `badge ${r.status}` }, r.status)),
          el("td", { class: "mono" }, when(r.start)),
          el("td", { class: "num" }, measured(r)),
          el("td", { class: "num" }, `${qty(r.quantity)} ${unitText(r.quantity, r.unit)}`),
          el("td", { class: "mono small" }, r.policy || ""),
          el("td", { class: "num", "data-field": "cost" }, usd(r.cost)),
        ),
      ),
    );
    body.querySelectorAll("i.dot").forEach((dot, i) => { dot.style.background = colorOf(records[i].resource); });
    $("#detail-total").textContent = costText(session);
    card.scrollIntoView({ behavior: "instant", block: "nearest" });
  } catch (err) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 8, class: "error" }, `Could not load the records: ${err.message}`)));
  }
}

function invoiceQuantity(text, unit) {
  if (text === null || text === undefined || text === "") return "";
  if (unit === "usd") return usd(text);
  return `${qty(text)} ${unitText(text, unit)}`;
}

function renderInvoice(invoice) {
  const body = $("#invoice tbody");
  const lines = invoice.lines || [];
  body.replaceChildren(
    ...lines.map((l) => {
      const per = l.per || l.unit;
      const unitPrice = l.unit_price !== null && l.unit_price !== undefined && l.unit_price !== "" ? `${usd(l.unit_price)} / ${per}` : "";
      const amount = l.amount === null || l.amount === undefined ? "unpriced" : usd(l.amount);
      return el(
        "tr",
        { "data-resource": l.resource, "data-model": l.model || "", class: l.amount === null ? "unpriced" : null },
        el("td", { class: "item" }, l.description || label(l.resource)),
        el("td", { class: "num" }, invoiceQuantity(l.quantity, l.unit)),
        /^0*\.?0*$/.test(String(l.included ?? ""))
          ? el("td", { class: "num nil" }, "—")
          : el("td", { class: "num" }, l.unit === "usd" ? usd(l.included) : qty(l.included)),
        el("td", { class: "num" }, l.unit === "usd" ? usd(l.billable) : qty(l.billable)),
        el("td", { class: "num small" }, unitPrice),
        el("td", { class: "num", "data-field": "amount" }, amount),
        el("td", { class: "num forecast", "data-field": "forecast" }),
      );
    }),
  );
  if (!lines.length) body.append(el("tr", {}, el("td", { colSpan: 7, class: "empty" }, "No usage this month.")));
  const due = invoice.nothing_due || invoice.total === undefined || invoice.total === null ? "Nothing due" : usd(invoice.total);
  $("#invoice-total").textContent = due;
  $("#kpi-invoice").textContent = due;
  $("#invoice-meta").textContent = `${invoice.month} · ${invoice.plan} plan · ${invoice.currency || "USD"}` +
    (invoice.price_date ? ` · prices as of ${invoice.price_date}` : "");
}

// ---- plan quotas and the month-end forecast ------------------------------------------------------------
const QUOTA_LABELS = { inference_credits: "LiveKit Inference credits", transcode: "Recording, export and import" };
const QUOTA_UNITS = { gb: "GB", number_month: "number-months", minute: "minutes", event: "events" };
const quotaAmount = (text, unit) => (unit === "usd" ? usd(text) : `${qty(text)} ${QUOTA_UNITS[unit] || unit}`);
const shortDay = (iso) => new Date(iso + "T00:00:00Z").toLocaleDateString("en-GB", { day: "numeric", month: "short", timeZone: "UTC" });

function runsOut(q) {
  if (q.exhausted_on) return `used up on ${shortDay(q.exhausted_on)}` + (q.hard_cap ? ": LiveKit refuses more" : "");
  if (q.exhausts_on) return `at this rate on ${shortDay(q.exhausts_on)}`;
  return q.per_day === null ? "rented per month" : "not this month";
}

function renderQuotas(doc) {
  $("#quotas-meta").textContent = `${doc.month} · ${doc.plan} plan · run-rate of the last ${qty(doc.run_rate.days)} days · ${doc.note}`;
  $("#quota-table tbody").replaceChildren(
    ...doc.quotas.map((q) => {
      const fill = el("div", { class: "fill" });
      fill.style.width = `${Math.min(100, asNumber(q.percent))}%`;
      return el(
        "tr",
        { "data-quota": q.quota, "data-level": q.level },
        el("td", { title: q.resources.join(", ") }, QUOTA_LABELS[q.quota] || label(q.quota),
          q.hard_cap ? el("span", { class: "badge hard-cap" }, "hard cap") : ""),
        el("td", {}, el("div", { class: `meter level-${q.level}`, title: `${q.percent} %` }, fill)),
        el("td", { class: "num", "data-field": "used" }, `${quotaAmount(q.used, q.unit)} · ${q.percent} %`),
        el("td", { class: "num", "data-field": "included" }, quotaAmount(q.included, q.unit)),
        el("td", { class: "num", "data-field": "remaining" }, quotaAmount(q.remaining, q.unit)),
        el("td", { class: "num", "data-field": "per-day" }, q.per_day === null ? "—" : quotaAmount(q.per_day, q.unit)),
        el("td", { class: "runs-out", "data-field": "runs-out" }, runsOut(q)),
      );
    }),
  );
}

// The forecast's lines go next to the invoice preview's: matched by resource, model and order.
function lineKeys(lines) {
  const seen = new Map();
  return lines.map((l) => {
    const key = `${l.resource}|${l.model || ""}`;
    seen.set(key, (seen.get(key) || 0) + 1);
    return `${key}|${seen.get(key)}`;
  });
}

function forecastCell(cell, line) {
  const amount = line.amount === null ? "unpriced" : usd(line.amount);
  const projected = line.resource === "plan_fee" || line.unit === "usd" ? "" : invoiceQuantity(line.quantity, line.unit);
  cell.replaceChildren(amount, projected ? el("span", { class: "sub" }, projected) : "");
}

function renderForecast(doc) {
  const body = $("#invoice tbody");
  const rows = [...body.querySelectorAll("tr[data-resource]")];
  const shown = new Map(lineKeys(rows.map((r) => ({ resource: r.dataset.resource, model: r.dataset.model }))).map((k, i) => [k, rows[i]]));
  const lines = doc.invoice.lines;
  lineKeys(lines).forEach((key, i) => {
    let row = shown.get(key);
    if (!row) { // usage the month has not seen yet, only its run-rate (the window reaches into last month)
      const l = lines[i];
      row = el("tr", { "data-resource": l.resource, "data-model": l.model || "" },
        el("td", { class: "item" }, l.description), ...[1, 2, 3, 4, 5].map(() => el("td", { class: "num nil" }, "—")),
        el("td", { class: "num forecast", "data-field": "forecast" }));
      body.querySelector("td.empty")?.parentElement.remove();
      body.append(row);
    }
    forecastCell(row.querySelector('[data-field="forecast"]'), lines[i]);
  });
  const due = doc.nothing_due ? "Nothing due" : usd(doc.total);
  $("#forecast-total").textContent = due;
  $("#kpi-forecast").textContent = due;
  $("#forecast-method").textContent = `Month-end forecast, ${qty(doc.days_left)} days left: ${doc.method_text}`;
}

// Quotas and forecast never stop the page: a month not begun, say, is said in their cards.
async function loadOutlook(month, plan) {
  const [quotas, forecast] = await Promise.allSettled([api("/v1/quotas", { month, plan }), api("/v1/forecast", { month, plan })]);
  if (quotas.status === "fulfilled") renderQuotas(quotas.value);
  else {
    $("#quotas-meta").textContent = `No quotas: ${quotas.reason.message}`;
    $("#quota-table tbody").replaceChildren();
  }
  if (forecast.status === "fulfilled") renderForecast(forecast.value);
  else {
    $("#forecast-method").textContent = `No forecast: ${forecast.reason.message}`;
    $("#forecast-total").textContent = "–";
    $("#kpi-forecast").textContent = "–";
  }
}

// ---- statements: issued invoices ----------------------------------------------------------------------
const FORMATS = ["json", "csv", "html"];

function downloadLinks(path, name, attrs) {
  return FORMATS.map((fmt) => {
    const link = el("button", { type: "button", class: "link inline", "data-format": fmt, ...attrs }, fmt.toUpperCase());
    link.addEventListener("click", () =>
      download(path, { format: fmt }, `${name}.${fmt}`).catch((err) => setStatus(`Could not download: ${err.message}`, "error")),
    );
    return link;
  });
}

function renderInvoices(listing) {
  const body = $("#invoices tbody");
  body.replaceChildren(
    ...listing.invoices.map((inv) => {
      const path = `/v1/invoices/${encodeURIComponent(inv.number)}`;
      const statements = inv.statements.map((who) =>
        el("span", { class: "statement", "data-customer": who }, `${customerLabel(who)} `,
          ...downloadLinks(`${path}/statements/${encodeURIComponent(who)}`, `statement-${inv.number}-${who}`, {})),
      );
      return el(
        "tr",
        { "data-number": inv.number },
        el("td", { class: "mono" }, inv.number),
        el("td", {}, inv.month),
        el("td", {}, inv.plan),
        el("td", {}, when(inv.issued)),
        el("td", { class: "num" }, String(inv.adjustments)),
        el("td", { class: "num", "data-field": "total" }, usd(inv.total)),
        el("td", { class: "downloads" }, ...downloadLinks(path, `invoice-${inv.number}`, {})),
        el("td", { class: "statements" }, ...statements),
      );
    }),
  );
  if (!listing.invoices.length) body.append(el("tr", {}, el("td", { colSpan: 8, class: "empty" }, "No invoice issued yet.")));
  const closed = listing.closed_without_invoice.map((m) => m.month);
  $("#closed-months").textContent = closed.length ? `Closed with nothing due, no invoice: ${closed.join(", ")}` : "";
}

async function viewInvoices() {
  try {
    renderInvoices(await api("/v1/invoices"));
    $("#invoices-list").hidden = false;
    document.body.dataset.invoices = "loaded";
  } catch (err) {
    setStatus(`Could not load the invoices: ${err.message}`, "error");
  }
}

// ---- page ---------------------------------------------------------------------------------------------
async function load() {
  const month = $("#month").value;
  const plan = $("#plan").value;
  if (!/^\d{4}-\d{2}$/.test(month)) return;
  const next = new URL(location.href);
  next.searchParams.set("month", month);
  next.searchParams.set("plan", plan);
  history.replaceState(null, "", next);
  $("#kpi-plan").textContent = plan[0].toUpperCase() + plan.slice(1);
  $("#session-detail").hidden = true;
  setStatus("Loading…");
  const { since, until, days } = monthRange(month);
  try {
    const [day, resource, model, customer, agent, sessions, invoice] = await Promise.all([
      api("/v1/usage", { since, until, group_by: "day" }),
      api("/v1/usage", { since, until, group_by: "resource" }),
      api("/v1/usage", { since, until, group_by: "model" }),
      api("/v1/usage", { since, until, group_by: "customer" }),
      api("/v1/usage", { since, until, group_by: "agent" }),
      api("/v1/sessions", { since, until, limit: SESSION_LIMIT }),
      api("/v1/invoice", { month, plan }),
    ]);
    $("#kpi-usage").textContent = usd(day.total);
    $("#kpi-sessions").textContent = groupDigits(String(sessions.sessions.length));
    $("#kpi-minutes").textContent = qty(sumDecimals(sessions.sessions.map((s) => s.billed_minutes)));
    const unpriced = [...new Set([...(day.unpriced || []), ...(model.unpriced || [])])];
    const warn = $("#unpriced");
    warn.hidden = !unpriced.length;
    warn.textContent = unpriced.length
      ? `Unpriced models (not in the totals; add them to the price book): ${unpriced.join(", ")}`
      : "";
    renderDayChart(day, days);
    renderBars("#by-resource", resource, label);
    renderBars("#by-model", model, modelLabel);
    renderBars("#by-customer", customer, customerLabel);
    renderBars("#by-agent", agent, agentLabel);
    $("#sessions-hint").textContent =
      (sessions.sessions.length >= SESSION_LIMIT ? `the newest ${SESSION_LIMIT} · ` : "") + "click a session to see its records";
    renderSessions(sessions.sessions, showSession);
    renderInvoice(invoice);
    await loadOutlook(month, plan);
    setStatus(`Updated ${new Date().toISOString().slice(11, 19)} UTC`, "ok");
    document.body.dataset.loaded = month + ":" + plan;
  } catch (err) {
    const hint = err.status === 401 ? ` — not signed in, or the session expired: ${LINK_HINT}.` : "";
    setStatus(`Could not load: ${err.message}${hint}`, "error");
  }
}

function init() {
  const now = new Date();
  const month = params.get("month") || `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
  $("#month").value = month;
  const plan = params.get("plan");
  if (plan && [...$("#plan").options].some((o) => o.value === plan)) $("#plan").value = plan;
  $("#month").addEventListener("change", load);
  $("#plan").addEventListener("change", async () => {
    // Only the invoice, quotas and forecast depend on the plan.
    const plan = $("#plan").value;
    $("#kpi-plan").textContent = plan[0].toUpperCase() + plan.slice(1);
    const next = new URL(location.href);
    next.searchParams.set("plan", plan);
    history.replaceState(null, "", next);
    try {
      renderInvoice(await api("/v1/invoice", { month: $("#month").value, plan }));
      await loadOutlook($("#month").value, plan);
      document.body.dataset.loaded = $("#month").value + ":" + plan;
    } catch (err) {
      setStatus(`Could not load the invoice: ${err.message}`, "error");
    }
  });
  $("#refresh").addEventListener("click", load);
  $("#controls").addEventListener("submit", (event) => event.preventDefault());
  $("#view-invoices").addEventListener("click", viewInvoices);
  $("#detail-close").addEventListener("click", () => {
    $("#session-detail").hidden = true;
    document.querySelectorAll("#sessions tr.selected").forEach((r) => r.classList.remove("selected"));
  });
  signIn().then(load, (err) => setStatus(`Could not sign in: ${err.message} — ${LINK_HINT}.`, "error"));
}

init();
