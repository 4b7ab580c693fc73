// The investigators' page: plain JavaScript against GET /v1/auditmanager/events (no framework,
// no network beyond this service). The search lives in the URL fragment, so a timeline can be
// shared as a link.
'use strict';

const BASE = '/v1/auditmanager';
const FILTERS = ['actor_id', 'resource_type', 'resource_id', 'type', 'outcome', 'trace_id',
  'source', 'subject', 'from', 'to'];
const PAGE = 100;

const $ = (sel) => document.querySelector(sel);
const form = $('#search');
const tbody = $('#timeline tbody');
const statusLine = $('#status');
const moreButton = $('#more');
const detail = $('#detail');

let current = { params: new URLSearchParams(), cursor: null, done: true, loading: false, count: 0 };
let selected = null;

// ---- credentials -----------------------------------------------------------------------------

const tokenInput = $('#token');
tokenInput.value = sessionStorage.getItem('audit-manager-token') || '';
tokenInput.addEventListener('change', () => {
  sessionStorage.setItem('audit-manager-token', tokenInput.value.trim());
});

function authHeaders(extra) {
  const h = Object.assign({}, extra);
  const token = tokenInput.value.trim();
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

// ---- the form and the URL fragment -----------------------------------------------------------

// datetime-local gives "2026-01-05T10:00" or "…:00:30"; the page treats it as UTC.
function toRfc3339(local) {
  if (!local) return '';
  const withSeconds = local.length === 16 ? local + ':00' : local;
  return withSeconds + 'Z';
}

function fromRfc3339(value) {
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return '';
  return d.toISOString().slice(0, 19);
}

function readForm() {
  const p = new URLSearchParams();
  for (const name of FILTERS) {
    let v = form.elements[name].value.trim();
    if (name === 'from' || name === 'to') v = toRfc3339(v);
    if (v) p.set(name, v);
  }
  return p;
}

function fillForm(p) {
  for (const name of FILTERS) {
    const v = p.get(name) || '';
    form.elements[name].value = (name === 'from' || name === 'to') && v ? fromRfc3339(v) : v;
  }
}

// ---- loading pages ---------------------------------------------------------------------------

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle('error', !!isError);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    const e = (body.errors || [])[0];
    if (e) return `${e.errorCode}: ${e.message}`;
  } catch (_) { /* not an envelope */ }
  return `HTTP ${resp.status}`;
}

function search(params) {
  current = { params, cursor: null, done: false, loading: false, count: 0 };
  tbody.replaceChildren();
  closeDetail();
  const hash = params.toString();
  if (location.hash.slice(1) !== hash) history.replaceState(null, '', hash ? '#' + hash : location.pathname);
  loadMore();
}

async function loadMore() {
  if (current.loading || current.done) return;
  const run = current;
  run.loading = true;
  moreButton.hidden = true;
  setStatus(run.count ? `${run.count} events, loading more…` : 'Searching…');
  const q = new URLSearchParams(run.params);
  q.set('limit', String(PAGE));
  if (run.cursor) q.set('cursor', run.cursor);
  let resp;
  try {
    resp = await fetch(`${BASE}/events?${q}`, { headers: authHeaders({ Accept: 'application/json' }) });
  } catch (e) {
    run.loading = false;
    setStatus(`The service did not answer (${e.message}).`, true);
    return;
  }
  if (run !== current) return; // a newer search replaced this one
  run.loading = false;
  if (!resp.ok) {
    if (resp.status === 401 || resp.status === 403) $('#credentials').open = true;
    setStatus(await errorText(resp), true);
    return;
  }
  const body = await resp.json();
  const events = body.response.events;
  for (const ev of events) tbody.appendChild(rowFor(ev));
  run.count += events.length;
  run.cursor = body.response.next_cursor;
  run.done = !run.cursor;
  moreButton.hidden = run.done;
  setStatus(run.done
    ? `${run.count} event${run.count === 1 ? '' : 's'}.`
    : `${run.count} events so far; scroll or press "Load more" for older ones.`);
}

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && current.count > 0) loadMore();
}).observe($('#sentinel'));
moreButton.addEventListener('click', loadMore);

// ---- the timeline ----------------------------------------------------------------------------

function formatTime(value) {
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return value || '';
  return d.toISOString().replace('T', ' ').replace('Z', '');
}

function cell(text, cls) {
  const td = document.createElement('td');
  if (cls) {
    const span = document.createElement('span');
    span.className = cls;
    span.textContent = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  return td;
}

// Integrity of a row as the service reports it: on a page `sealed` / `unsealed` / `legacy`;
// for one event (the detail) the full check: `verified`, `failed`, `unverifiable`, ….
function integrityOf(status) {
  switch (status) {
    case 'verified': return ['sealed and verified', 'integrity verified'];
    case 'sealed': return ['sealed', 'integrity verified'];
    case 'unsealed': return ['not yet sealed', 'integrity'];
    case 'legacy': return ['before sealing', 'integrity'];
    case 'failed': return ['FAILED verification', 'integrity failed'];
    case 'unverifiable': return ['sealed, key not configured', 'integrity'];
    default: return ['—', 'integrity'];
  }
}

function rowFor(ev) {
  const tr = document.createElement('tr');
  tr.tabIndex = 0;
  tr.dataset.id = ev.id;
  const resource = [ev.resource_type, ev.resource_id].filter(Boolean).join(' / ');
  const [integrity, integrityClass] = integrityOf(ev.integrity && ev.integrity.status);
  tr.append(
    cell(formatTime(ev.occurred_at)),
    cell(ev.actor_id),
    cell(ev.action),
    cell(ev.outcome, 'outcome ' + ev.outcome),
    cell(resource),
    cell(ev.type),
    cell(integrity, integrityClass),
  );
  tr.addEventListener('click', () => showDetail(ev, tr));
  tr.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); showDetail(ev, tr); }
    if (e.key === 'ArrowDown' && tr.nextElementSibling) { e.preventDefault(); tr.nextElementSibling.focus(); }
    if (e.key === 'ArrowUp' && tr.previousElementSibling) { e.preventDefault(); tr.previousElementSibling.focus(); }
  });
  return tr;
}

// ---- the detail ------------------------------------------------------------------------------

function showDetail(ev, tr) {
  if (selected) selected.removeAttribute('aria-selected');
  selected = tr;
  tr.setAttribute('aria-selected', 'true');
  $('#detail-title').textContent = `Event ${ev.id}`;
  const dl = $('#fields');
  dl.replaceChildren();
  for (const [k, v] of Object.entries(ev)) {
    if (k === 'details' || k === 'integrity') continue;
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v === null || v === undefined ? '—' : String(v);
    dl.append(dt, dd);
  }
  const details = ev.details || null;
  $('#details-json').textContent = details ? JSON.stringify(details, null, 2) : '(none)';
  const changes = details && Array.isArray(details.changes) ? details.changes : [];
  const body = $('#changes tbody');
  body.replaceChildren();
  for (const c of changes) {
    const tr = document.createElement('tr');
    const show = (v) => (v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v));
    const before = 'before' in c ? c.before : c.old;
    const after = 'after' in c ? c.after : c.new;
    tr.append(cell(show(c.field ?? c.path ?? c.name)), cell(show(before), 'before'), cell(show(after), 'after'));
    body.appendChild(tr);
  }
  $('#changes-box').hidden = changes.length === 0;
  const byTrace = $('#by-trace');
  byTrace.disabled = !ev.trace_id;
  byTrace.onclick = () => pivot({ trace_id: ev.trace_id });
  $('#by-actor').onclick = () => pivot({ actor_id: ev.actor_id });
  detail.hidden = false;
  detail.focus();
  checkIntegrity(ev);
}

// The full integrity check of one event (its seal, signature and row hash), from the service.
async function checkIntegrity(ev) {
  const out = $('#integrity-status');
  out.className = 'integrity';
  out.textContent = 'checking…';
  let text = 'could not be checked';
  let cls = 'integrity';
  try {
    const resp = await fetch(`${BASE}/events/${encodeURIComponent(ev.id)}`, { headers: authHeaders({ Accept: 'application/json' }) });
    if (resp.ok) {
      const body = await resp.json();
      const same = body.response.events.find((r) => r.occurred_at === ev.occurred_at) || {};
      const result = same.integrity || {};
      const [label, klass] = integrityOf(result.status);
      text = result.detail ? `${label}: ${result.detail}` : label;
      cls = klass;
    } else {
      text = await errorText(resp);
    }
  } catch (e) {
    text = `could not be checked (${e.message})`;
  }
  if ($('#detail-title').textContent !== `Event ${ev.id}`) return; // another event is open
  out.className = cls;
  out.textContent = text;
}

function closeDetail() {
  detail.hidden = true;
  if (selected) {
    selected.removeAttribute('aria-selected');
    selected.focus();
    selected = null;
  }
}

function pivot(filters) {
  const p = new URLSearchParams(filters);
  fillForm(p);
  search(p);
}

$('#close-detail').addEventListener('click', closeDetail);
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && !detail.hidden) closeDetail();
});

// ---- export ----------------------------------------------------------------------------------

async function exportAs(accept, extension) {
  const params = readForm();
  setStatus('Exporting every match…');
  let resp;
  try {
    resp = await fetch(`${BASE}/events?${params}`, { headers: authHeaders({ Accept: accept }) });
  } catch (e) {
    setStatus(`The service did not answer (${e.message}).`, true);
    return;
  }
  if (!resp.ok) {
    setStatus(await errorText(resp), true);
    return;
  }
  const blob = await resp.blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `audit-events-${new Date().toISOString().replace(/[:.]/g, '-')}.${extension}`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  setStatus(`Export ready (${blob.size} bytes).`);
}

$('#export-ndjson').addEventListener('click', () => exportAs('application/x-ndjson', 'ndjson'));
$('#export-csv').addEventListener('click', () => exportAs('text/csv', 'csv'));

// ---- start -----------------------------------------------------------------------------------

form.addEventListener('submit', (e) => {
  e.preventDefault();
  search(readForm());
});
$('#clear').addEventListener('click', () => {
  form.reset();
  search(new URLSearchParams());
});

const initial = new URLSearchParams(location.hash.slice(1));
fillForm(initial);
search(initial);
