// fhirimg console: a SMART app (standalone launch, authorization code + PKCE S256) that
// reads fhirimg's FHIR API and /console/api with the operator's token. No framework, no
// build step, nothing from a CDN; every value from the server is inserted as text.
"use strict";

const cfg = document.body.dataset;
const main = document.getElementById("main");
const FHIR = new URL(cfg.fhirBase).pathname.replace(/\/$/, "");
const TRANSFER = "http://fhirimg.org/fhir/CodeSystem/transfer";
const STEPS = [["qido", "1 QIDO-RS"], ["metadata", "2 metadata"], ["retrieve", "3 pixel data"]];
let timer = null;

// -- small helpers -------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
function show(...nodes) { main.replaceChildren(...nodes); }
function failure(error) { return el("p", {class: "error", role: "alert"}, String(error.message || error)); }
function fmtSeconds(s) { return s == null ? "–" : s < 1 ? `${(s * 1000).toFixed(0)} ms` : s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`; }
function fmtBytes(n) { n = Number(n || 0); return n < 1e6 ? `${(n / 1e3).toFixed(1)} kB` : n < 1e9 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e9).toFixed(2)} GB`; }
function when(instant) { return instant ? new Date(instant).toLocaleString() : "–"; }
function b64url(bytes) { return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""); }
function randomText(n) { return b64url(crypto.getRandomValues(new Uint8Array(n))); }
function samePath(url) { return new URL(url, location.href).pathname; }

// -- sign-in: SMART App Launch, standalone, authorization code + PKCE S256 -------------------
function token() {
  const saved = JSON.parse(sessionStorage.getItem("fhirimg.token") || "null");
  return saved && saved.expires > Date.now() + 5000 ? saved : null;
}
async function signIn() {
  if (!window.crypto || !crypto.subtle) throw new Error("this page needs a secure origin (https, or a loopback address) to sign in");
  const verifier = randomText(48), state = randomText(16);
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem("fhirimg.pkce", JSON.stringify({verifier, state, route: location.hash || "#/studies"}));
  const query = new URLSearchParams({response_type: "code", client_id: cfg.client, redirect_uri: cfg.redirect,
    scope: cfg.scopes, state, aud: cfg.fhirBase, code_challenge: challenge, code_challenge_method: "S256"});
  location.assign(`${cfg.authorize}?${query}`);
  return new Promise(() => {});  // the page is leaving
}
async function finishSignIn() {
  const params = new URLSearchParams(location.search);
  const saved = JSON.parse(sessionStorage.getItem("fhirimg.pkce") || "null");
  sessionStorage.removeItem("fhirimg.pkce");
  if (params.get("error")) throw new Error(`sign-in refused: ${params.get("error")} ${params.get("error_description") || ""}`);
  if (!saved || params.get("state") !== saved.state) throw new Error("this sign-in answer is not for this browser's request (state differs)");
  const body = new URLSearchParams({grant_type: "authorization_code", code: params.get("code") || "",
    redirect_uri: cfg.redirect, client_id: cfg.client, code_verifier: saved.verifier});
  const answer = await fetch(samePath(cfg.token), {method: "POST", body});
  const granted = await answer.json();
  if (!answer.ok) throw new Error(`the token was refused: ${granted.error} ${granted.error_description || ""}`);
  keep(granted, userOf(granted));
  history.replaceState(null, "", `/console${saved.route}`);
}
function keep(granted, user) {
  sessionStorage.setItem("fhirimg.token", JSON.stringify({access: granted.access_token, scope: granted.scope,
    expires: Date.now() + granted.expires_in * 1000, refresh: granted.refresh_token || null, user}));
}
async function refreshed() {
  // online_access: a new access token while the browser tab lives, without asking again.
  const saved = JSON.parse(sessionStorage.getItem("fhirimg.token") || "null");
  if (!saved || !saved.refresh) return null;
  const answer = await fetch(samePath(cfg.token), {method: "POST", body: new URLSearchParams({
    grant_type: "refresh_token", refresh_token: saved.refresh, client_id: cfg.client})});
  if (!answer.ok) { sessionStorage.removeItem("fhirimg.token"); return null; }
  keep(await answer.json(), saved.user);
  return token();
}
function userOf(granted) {
  try {
    const claims = JSON.parse(atob(granted.id_token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return claims.fhirUser || claims.sub || "";
  } catch (e) { return ""; }
}

async function api(path, options) {
  options = options || {};
  const headers = Object.assign({Accept: "application/fhir+json, application/json"}, options.headers || {});
  const saved = token() || (cfg.auth === "on" ? await refreshed() : null);
  if (saved) headers.Authorization = `Bearer ${saved.access}`;
  const answer = await fetch(path, Object.assign({}, options, {headers}));
  if (answer.status === 401 && cfg.auth === "on") {
    sessionStorage.removeItem("fhirimg.token");
    return signIn();
  }
  const text = await answer.text();
  const body = text ? JSON.parse(text) : null;
  if (!answer.ok) throw new Error(outcomeText(body) || `${answer.status} ${answer.statusText}`);
  return {body, answer};
}
function outcomeText(body) {
  if (!body || body.resourceType !== "OperationOutcome") return "";
  return body.issue.map(i => i.diagnostics || (i.details && i.details.text) || i.code).join("; ");
}
function resources(bundle, type) {
  return (bundle.entry || []).filter(e => e.resource && e.resource.resourceType === type && (!e.search || e.search.mode !== "outcome")).map(e => e.resource);
}
function byReference(bundle) {
  const found = {};
  for (const e of bundle.entry || []) if (e.resource) found[`${e.resource.resourceType}/${e.resource.id}`] = e.resource;
  return found;
}
function patientName(patient) {
  if (!patient) return "–";
  const name = (patient.name || [])[0] || {};
  return name.text || [name.family, (name.given || []).join(" ")].filter(Boolean).join(", ") || patient.id;
}
function mrn(patient) { return patient && patient.identifier && patient.identifier[0] ? patient.identifier[0].value : ""; }
function studyUid(study) {
  const id = (study.identifier || []).find(i => i.system === "urn:dicom:uid" || (i.value || "").startsWith("urn:oid:"));
  return id ? id.value.replace(/^urn:oid:/, "") : "";
}

// -- pages -----------------------------------------------------------------------------------
const pages = {studies: studiesPage, study: studyPage, transfers: transfersPage, replication: replicationPage,
  workers: workersPage, audit: auditPage};

async function route() {
  clearTimeout(timer);
  const [name, arg] = (location.hash.replace(/^#\//, "") || "studies").split("/");
  for (const link of document.querySelectorAll("header nav a")) link.classList.toggle("current", link.dataset.page === name);
  const saved = token();
  document.getElementById("who").textContent = saved ? (saved.user || "signed in") : (cfg.auth === "on" ? "" : "no sign-in (auth.mode = none)");
  try {
    await (pages[name] || studiesPage)(decodeURIComponent(arg || ""));
  } catch (error) {
    show(failure(error));
  }
}

async function studiesPage() {
  const form = el("form", {class: "search", id: "study-search"},
    el("label", {}, "MRN", el("input", {name: "mrn", autocomplete: "off"})),
    el("label", {}, "Name", el("input", {name: "name", autocomplete: "off"})),
    el("label", {}, "From", el("input", {name: "from", type: "date"})),
    el("label", {}, "To", el("input", {name: "to", type: "date"})),
    el("label", {}, "Modality", el("input", {name: "modality", size: 4, placeholder: "CT"})),
    el("button", {class: "primary", type: "submit"}, "Search"));
  const results = el("div", {id: "study-results"});
  const saved = JSON.parse(sessionStorage.getItem("fhirimg.studysearch") || "{}");
  for (const [k, v] of Object.entries(saved)) if (form.elements[k]) form.elements[k].value = v;
  form.addEventListener("submit", async event => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    sessionStorage.setItem("fhirimg.studysearch", JSON.stringify(values));
    results.replaceChildren(el("p", {class: "muted"}, "Searching…"));
    try { results.replaceChildren(await studyTable(values)); } catch (error) { results.replaceChildren(failure(error)); }
  });
  show(el("h2", {}, "Studies"), form, results);
  if (Object.values(saved).some(Boolean)) form.requestSubmit();
}

async function studyTable(values) {
  const query = new URLSearchParams({_count: "50", _sort: "-started", _include: "ImagingStudy:subject"});
  if (values.mrn) query.append("patient.identifier", values.mrn.trim());
  if (values.name) query.append("patient.name", values.name.trim());
  if (values.from) query.append("started", `ge${values.from}`);
  if (values.to) query.append("started", `le${values.to}`);
  if (values.modality) query.append("modality", values.modality.trim().toUpperCase());
  const {body} = await api(`${FHIR}/ImagingStudy?${query}`);
  const refs = byReference(body);
  const studies = resources(body, "ImagingStudy");
  if (!studies.length) return el("p", {class: "muted"}, "No study matches.");
  return el("table", {id: "studies"},
    el("thead", {}, el("tr", {}, ["Started", "Patient", "MRN", "Modalities", "Series", "Instances", "Description", "Status"].map(h => el("th", {}, h)))),
    el("tbody", {}, studies.map(study => {
      const patient = refs[(study.subject || {}).reference];
      const modalities = [...new Set((study.series || []).map(s => (s.modality || {}).coding ? s.modality.coding[0].code : (s.modality && s.modality.concept ? s.modality.concept.coding[0].code : "")))].filter(Boolean);
      return el("tr", {class: "link", "data-study": study.id, onclick: () => { location.hash = `#/study/${encodeURIComponent(study.id)}`; }},
        el("td", {}, study.started ? study.started.slice(0, 10) : "–"), el("td", {}, patientName(patient)), el("td", {}, mrn(patient)),
        el("td", {}, modalities.join(", ")), el("td", {}, study.numberOfSeries ?? (study.series || []).length),
        el("td", {}, study.numberOfInstances ?? "–"), el("td", {}, study.description || ""), el("td", {}, study.status));
    })));
}

function modalityOf(series) {
  const m = series.modality || {};
  return (m.coding && m.coding[0] && m.coding[0].code) || (m.concept && m.concept.coding && m.concept.coding[0].code) || "";
}

async function studyPage(id) {
  const [{body: study}, {body: tasks}] = await Promise.all([
    api(`${FHIR}/ImagingStudy/${encodeURIComponent(id)}`),
    api(`${FHIR}/Task?focus=${encodeURIComponent(`ImagingStudy/${id}`)}&_sort=-_lastUpdated&_count=10`)]);
  const patient = study.subject && study.subject.reference ? (await api(`${FHIR}/${study.subject.reference}`).catch(() => ({body: null}))).body : null;
  const endpoints = await Promise.all((study.endpoint || []).map(e => api(`${FHIR}/${e.reference}`).then(r => r.body).catch(() => null)));
  const uid = studyUid(study);
  const local = uid ? await localInstances(uid) : null;
  const note = el("p", {id: "retrieve-note", class: "muted"});
  const actions = el("p", {},
    el("button", {class: "primary", id: "retrieve", type: "button", onclick: async () => {
      note.textContent = "Asking for the images…";
      try {
        const {answer} = await api(`${FHIR}/ImagingStudy/${encodeURIComponent(id)}/$retrieve`, {method: "POST",
          headers: {"Content-Type": "application/fhir+json", Prefer: "respond-async"},
          body: JSON.stringify({resourceType: "Parameters", parameter: [{name: "priority", valueCode: "stat"}]})});
        const where = answer.headers.get("Content-Location") || "";
        note.textContent = `Transfer started (${where.replace(/^.*\/fhir\//, "")}).`;
        location.hash = "#/transfers";
      } catch (error) { note.replaceChildren(failure(error)); }
    }}, "Retrieve images"), " ",
    uid && cfg.viewer ? el("a", {id: "open-viewer", href: cfg.viewer.replace("{StudyInstanceUID}", encodeURIComponent(uid)), target: "_blank", rel: "noopener"}, "Open in viewer") : null);
  show(
    el("h2", {}, `Study ${study.description || ""}`.trim()),
    el("p", {}, el("b", {}, patientName(patient)), ` · MRN ${mrn(patient) || "–"} · started ${when(study.started)} · `, el("span", {class: "pill"}, study.status)),
    el("p", {class: "muted"}, `Study Instance UID ${uid || "–"}`),
    actions, note,
    el("h3", {}, "Where its images are"),
    el("table", {}, el("tbody", {},
      endpoints.filter(Boolean).map(e => el("tr", {}, el("td", {}, e.name || e.id), el("td", {}, e.address), el("td", {}, e.status))),
      el("tr", {}, el("td", {}, "fhirimg"), el("td", {}, "/dicom-web"), el("td", {id: "local-count"}, local == null ? "–" : `${local} instances stored here`)))),
    el("h3", {}, "Series"),
    el("table", {id: "series"}, el("thead", {}, el("tr", {}, ["#", "Modality", "Instances", "Description", "Series Instance UID"].map(h => el("th", {}, h)))),
      el("tbody", {}, (study.series || []).map(s => el("tr", {}, el("td", {}, s.number ?? ""), el("td", {}, modalityOf(s)),
        el("td", {}, s.numberOfInstances ?? (s.instance || []).length), el("td", {}, s.description || ""), el("td", {class: "muted"}, s.uid))))),
    el("h3", {}, "Tasks"),
    el("div", {}, resources(tasks, "Task").map(task => taskCard(task, null, maxTotal([task])))));
  sizeBars(main);
}

async function localInstances(uid) {
  try {
    const saved = token() || await refreshed();
    const answer = await fetch(`/dicom-web/studies?StudyInstanceUID=${encodeURIComponent(uid)}&includefield=00201208`,
      {headers: Object.assign({Accept: "application/dicom+json"}, saved ? {Authorization: `Bearer ${saved.access}`} : {})});
    if (answer.status === 204) return 0;
    if (!answer.ok) return null;
    const found = await answer.json();
    return found.length ? ((found[0]["00201208"] || {}).Value || [0])[0] : 0;
  } catch (e) { return null; }
}

// -- transfers: the bottleneck at a glance ---------------------------------------------------
function outputs(task) {
  const found = {};
  for (const o of task.output || []) {
    const code = o.type && o.type.coding && o.type.coding[0] ? o.type.coding[0].code : "";
    const value = o.valueQuantity ? o.valueQuantity.value : o.valueInteger ?? o.valueInteger64 ?? o.valueString;
    if (code === "rejected") (found.rejected = found.rejected || []).push(o.valueString);
    else found[code] = value;
  }
  return found;
}
function currentStep(task) {
  const coding = task.businessStatus && task.businessStatus.coding ? task.businessStatus.coding[0] : null;
  return coding ? coding.code : "";
}
function stepSeconds(task, progress) {
  const out = outputs(task), seconds = {};
  for (const [step] of STEPS) {
    if (out[`duration-${step}`] != null) seconds[step] = Number(out[`duration-${step}`]);
    else if (progress && progress.steps && progress.steps[step]) {
      const s = progress.steps[step];
      seconds[step] = ((s.ended_ms || progress.now_ms) - s.started_ms) / 1000;
    }
  }
  if (task.status === "in-progress" && seconds[currentStep(task)] == null && task.meta && task.meta.lastUpdated) {
    seconds[currentStep(task)] = Math.max(0, (Date.now() - Date.parse(task.meta.lastUpdated)) / 1000);
  }
  return seconds;
}
function maxTotal(tasks, progressById) {
  return Math.max(1e-3, ...tasks.map(t => Object.values(stepSeconds(t, (progressById || {})[t.id])).reduce((a, b) => a + b, 0)));
}

function taskCard(task, study, scale, progress) {
  const out = outputs(task), seconds = stepSeconds(task, progress), active = task.status === "in-progress" ? currentStep(task) : "";
  const bytes = out["bytes-retrieved"] ?? (progress ? progress.bytes : 0);
  const rate = out["retrieve-throughput"] ?? (progress && seconds.retrieve ? progress.bytes / seconds.retrieve / 1e6 : null);
  const reason = task.statusReason && task.statusReason.concept ? task.statusReason.concept.text : "";
  return el("div", {class: "task", "data-task": task.id, "data-status": task.status},
    el("div", {class: "head"},
      el("span", {class: `status status-${task.status}`}, task.status),
      el("span", {}, task.businessStatus ? task.businessStatus.text : ""),
      study ? el("a", {href: `#/study/${encodeURIComponent(study.id)}`}, study.description || `ImagingStudy/${study.id}`) : null,
      el("span", {class: "muted"}, `Task/${task.id} · ${task.priority || "routine"} · ${when(task.authoredOn)}`)),
    reason ? el("p", {class: "error"}, reason) : null,
    el("div", {class: "bars"}, STEPS.map(([step, label]) => {
      const s = seconds[step];
      const width = s == null ? 0 : Math.max(0.3, 100 * s / scale);
      return [el("span", {}, label),
        el("div", {class: `bar ${step}${active === step ? " active" : ""}`, "data-step": step, "data-seconds": s ?? ""},
          el("span", {style: null, "data-width": width.toFixed(2)})),
        el("span", {class: "muted"}, s == null ? (active === step ? "running" : "–") : fmtSeconds(s))];
    })),
    el("div", {class: "figures"},
      el("span", {}, "instances ", el("b", {}, `${out["instances-stored"] ?? (progress ? progress.instances : "–")}/${out["instances-expected"] ?? "–"}`)),
      el("span", {}, "bytes ", el("b", {}, fmtBytes(bytes))),
      el("span", {}, "throughput ", el("b", {}, rate == null ? "–" : `${Number(rate).toFixed(1)} MB/s`)),
      el("span", {}, "retries ", el("b", {}, out.retries ?? 0)),
      el("span", {}, "rejected ", el("b", {}, out["instances-rejected"] ?? 0)),
      out["time-to-first-instance"] != null ? el("span", {}, "first instance after ", el("b", {}, fmtSeconds(Number(out["time-to-first-instance"])))) : null),
    progress && progress.samples && progress.samples.length > 1 ? throughputChart(progress) : null,
    out.rejected ? el("details", {}, el("summary", {}, `${out.rejected.length} rejected objects`), el("ul", {}, out.rejected.map(r => el("li", {}, r)))) : null);
}

function sizeBars(root) {
  // Widths go through the DOM, not a style attribute: the page's CSP allows no inline style.
  for (const span of root.querySelectorAll(".bar > span[data-width]")) span.style.width = `${span.dataset.width}%`;
}

function throughputChart(progress) {
  const samples = progress.samples, w = 480, h = 90;
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i][0] - samples[i - 1][0]) / 1000;
    if (dt > 0) rates.push([samples[i][0], (samples[i][1] - samples[i - 1][1]) / dt / 1e6]);
  }
  if (!rates.length) return null;
  const t0 = samples[0][0], t1 = samples[samples.length - 1][0], top = Math.max(...rates.map(r => r[1]), 0.001);
  const points = rates.map(([t, r]) => `${(w * (t - t0) / Math.max(1, t1 - t0)).toFixed(1)},${(h - 12 - (h - 20) * r / top).toFixed(1)}`).join(" ");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart"); svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("data-chart", "throughput");
  const line = document.createElementNS(svg.namespaceURI, "polyline"); line.setAttribute("points", points);
  const label = document.createElementNS(svg.namespaceURI, "text"); label.setAttribute("x", 4); label.setAttribute("y", 10);
  label.textContent = `pixel data MB/s over the transfer (peak ${top.toFixed(1)})`;
  svg.append(line, label);
  return svg;
}

async function transfersPage() {
  const list = el("div", {id: "transfers"});
  show(el("h2", {}, "Transfers"), el("p", {class: "muted"}, "Each bar is one of the three steps, drawn to one scale across the Tasks shown: the longest bar is where the time went."), list);
  const refresh = async () => {
    try {
      const {body} = await api(`${FHIR}/Task?code=${encodeURIComponent(`${TRANSFER}|retrieve`)}&_sort=-_lastUpdated&_count=20&_include=Task:focus`);
      const refs = byReference(body), tasks = resources(body, "Task");
      const progressById = {};
      // Live samples are kept for an hour: running Tasks, and the few that ended in it.
      const hourAgo = Date.now() - 3600 * 1000;
      const ended = tasks.filter(t => t.status !== "in-progress" && t.meta && Date.parse(t.meta.lastUpdated) > hourAgo).slice(0, 5);
      await Promise.all(tasks.filter(t => t.status === "in-progress").concat(ended).map(async t => {
        progressById[t.id] = await api(`/console/api/transfers/${encodeURIComponent(t.id)}`).then(r => r.body).catch(() => null);
      }));
      const scale = maxTotal(tasks, progressById);
      list.replaceChildren(...(tasks.length ? tasks.map(t => taskCard(t, refs[(t.focus || {}).reference], scale, progressById[t.id]))
        : [el("p", {class: "muted"}, "No transfer yet: open a study and ask for its images.")]));
      sizeBars(list);
      const busy = tasks.some(t => ["requested", "in-progress", "received", "accepted", "ready"].includes(t.status));
      timer = setTimeout(refresh, busy ? 1000 : 5000);
    } catch (error) { list.replaceChildren(failure(error)); timer = setTimeout(refresh, 5000); }
  };
  await refresh();
}

// -- replication ---------------------------------------------------------------------------
const lagHistory = {};
async function replicationPage() {
  const table = el("div", {id: "replication"}), chart = el("div", {id: "lag-chart"});
  show(el("h2", {}, "Replication"), table, el("h3", {}, "Lag while this page is open"), chart);
  const refresh = async () => {
    try {
      const {body} = await api("/console/api/replication");
      const now = Date.now();
      for (const link of body.links) (lagHistory[link.name] = lagHistory[link.name] || []).push([now, link.lag_seconds || 0]);
      table.replaceChildren(body.links.length ? el("table", {}, el("thead", {}, el("tr", {}, ["Link", "Direction", "Peer", "Cursor", "Behind", "Lag", "Applied", "Conflicts", "Rejected", "Last success", "Last error"].map(h => el("th", {}, h)))),
        el("tbody", {}, body.links.map(l => el("tr", {}, el("td", {}, l.name), el("td", {}, l.direction), el("td", {}, l.url), el("td", {class: "muted"}, l.cursor || "–"),
          el("td", {}, l.behind ?? "–"), el("td", {}, fmtSeconds(l.lag_seconds)), el("td", {}, l.applied), el("td", {}, l.conflicts), el("td", {}, l.rejected),
          el("td", {}, when(l.last_success)), el("td", {class: l.last_error ? "error" : ""}, l.last_error || "–")))))
        : el("p", {class: "muted"}, "No replication link is configured ([replicate] in the configuration)."));
      chart.replaceChildren(...Object.entries(lagHistory).map(([name, points]) => lagChart(name, points.slice(-180))));
    } catch (error) { table.replaceChildren(failure(error)); }
    timer = setTimeout(refresh, 5000);
  };
  await refresh();
}
function lagChart(name, points) {
  const w = 480, h = 80, t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1), top = Math.max(1, ...points.map(p => p[1]));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart"); svg.setAttribute("width", w); svg.setAttribute("height", h);
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("points", points.map(([t, v]) => `${(w * (t - t0) / (t1 - t0)).toFixed(1)},${(h - 10 - (h - 20) * v / top).toFixed(1)}`).join(" "));
  const label = document.createElementNS(svg.namespaceURI, "text"); label.setAttribute("x", 4); label.setAttribute("y", 10);
  label.textContent = `${name}: lag in seconds (max ${fmtSeconds(top)})`;
  svg.append(line, label);
  return svg;
}

// -- workers and queues ----------------------------------------------------------------------
async function workersPage() {
  const box = el("div", {id: "workers"});
  show(el("h2", {}, "Workers and queues"), box);
  const refresh = async () => {
    try {
      const {body} = await api("/console/api/workers");
      box.replaceChildren(
        body.redis !== "up" ? el("p", {class: "muted"}, "No Redis is configured: transfers run nowhere until redis_url is set.") : "",
        el("h3", {}, "Queues"),
        el("table", {id: "queues"}, el("thead", {}, el("tr", {}, ["Queue", "Waiting", "Oldest waiting", "Running", "Failed", "Scheduled"].map(h => el("th", {}, h)))),
          el("tbody", {}, body.queues.map(q => el("tr", {}, el("td", {}, q.name), el("td", {}, q.waiting), el("td", {}, fmtSeconds(q.oldest_wait_seconds)),
            el("td", {}, q.running), el("td", {}, q.failed), el("td", {}, q.scheduled))))),
        el("h3", {}, "Workers"),
        body.workers.length ? el("table", {id: "worker-list"}, el("thead", {}, el("tr", {}, ["Worker", "State", "Queues", "Current job", "Last heartbeat", "Done", "Failed"].map(h => el("th", {}, h)))),
          el("tbody", {}, body.workers.map(w => el("tr", {}, el("td", {}, w.name), el("td", {}, w.state), el("td", {}, w.queues.join(", ")), el("td", {}, w.current_job || "–"),
            el("td", {}, w.seconds_since_heartbeat == null ? "–" : `${fmtSeconds(w.seconds_since_heartbeat)} ago`), el("td", {}, w.successful), el("td", {}, w.failed)))))
          : el("p", {class: "error"}, "No worker is alive."));
    } catch (error) { box.replaceChildren(failure(error)); }
    timer = setTimeout(refresh, 2000);
  };
  await refresh();
}

// -- audit: a patient's access trail ---------------------------------------------------------
async function auditPage() {
  const form = el("form", {class: "search", id: "audit-search"},
    el("label", {}, "Patient MRN", el("input", {name: "mrn", autocomplete: "off"})),
    el("label", {}, "or Patient id", el("input", {name: "id", autocomplete: "off"})),
    el("button", {class: "primary", type: "submit"}, "Show the trail"));
  const results = el("div", {id: "audit-results"});
  form.addEventListener("submit", async event => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    results.replaceChildren(el("p", {class: "muted"}, "Searching…"));
    try { results.replaceChildren(await auditTable(values)); } catch (error) { results.replaceChildren(failure(error)); }
  });
  show(el("h2", {}, "Audit"), el("p", {class: "muted"}, "Who saw or changed this patient's data, newest first (reading the trail is itself recorded)."), form, results);
}
async function auditTable(values) {
  let id = (values.id || "").trim();
  if (!id && values.mrn) {
    const {body} = await api(`${FHIR}/Patient?identifier=${encodeURIComponent(values.mrn.trim())}&_elements=id`);
    const found = resources(body, "Patient");
    if (!found.length) return el("p", {class: "muted"}, "No patient has this MRN.");
    id = found[0].id;
  }
  const {body} = await api(`${FHIR}/AuditEvent?patient=${encodeURIComponent(`Patient/${id}`)}&_sort=-date&_count=100`);
  const events = resources(body, "AuditEvent");
  if (!events.length) return el("p", {class: "muted"}, "Nothing recorded for this patient.");
  return el("table", {id: "audit"}, el("thead", {}, el("tr", {}, ["When", "What", "Action", "Who", "From", "Outcome"].map(h => el("th", {}, h)))),
    el("tbody", {}, events.map(e => {
      const requestors = (e.agent || []).filter(a => a.requestor);
      const who = (requestors.length ? requestors : e.agent || []).map(a => a.who && (a.who.display || (a.who.identifier || {}).value || a.who.reference)).filter(Boolean);
      const network = (e.agent || []).map(a => a.networkString || (a.networkUri || "")).find(Boolean) || "";
      const code = e.code && e.code.coding ? (e.code.coding[0].display || e.code.coding[0].code) : "";
      const outcome = e.outcome && e.outcome.code ? e.outcome.code.code : "";
      return el("tr", {}, el("td", {}, when(e.recorded)), el("td", {}, code), el("td", {}, e.action || ""), el("td", {}, who.join(", ")),
        el("td", {}, network), el("td", {class: outcome && outcome !== "0" ? "error" : ""}, outcome === "0" ? "success" : outcome));
    })));
}

// -- start -----------------------------------------------------------------------------------
document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem("fhirimg.token");
  location.assign("/console");
});
window.addEventListener("hashchange", route);
(async () => {
  try {
    if (location.pathname.endsWith("/console/callback")) await finishSignIn();
    if (cfg.auth === "on" && !token() && !(await refreshed())) return signIn();
    await route();
  } catch (error) {
    show(failure(error), el("p", {}, el("a", {href: "/console"}, "Sign in again")));
  }
})();
