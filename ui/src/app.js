// kumo's web console. Everything goes through the Kubernetes API with the user's bearer token: lists and
// watches keep the tables current (no polling), KubeVirt's subresources start, stop and pause, and the serial
// console (xterm.js) and VNC (noVNC) are WebSockets to the same subresources virtctl uses. Browsers cannot set
// an Authorization header on a WebSocket, so the token travels as Kubernetes' bearer subprotocol.
import { Terminal } from './vendor/xterm/xterm.mjs';
import RFB from './vendor/novnc/core/rfb.js';

const SUB = '/apis/subresources.kubevirt.io/v1';
const KV = '/apis/kubevirt.io/v1';
const $ = (q) => document.querySelector(q);

let token = sessionStorage.getItem('kumo-token');
let ns = sessionStorage.getItem('kumo-namespace') || 'default';
const vms = new Map();
const vmis = new Map();
const events = new Map();
let watches = [];
let selected = null; // name of the VM or VMI shown below the tables
let term = null;
let consoleWs = null;
let rfb = null;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const when = (t) => (t ? new Date(t).toLocaleString() : '');
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body, contentType = 'application/json') {
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = contentType;
  const payload = body === undefined || typeof body === 'string' ? body : JSON.stringify(body);
  const r = await fetch(path, { method, headers, body: payload });
  const text = await r.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: keep the text
  }
  if (!r.ok) throw new ApiError(r.status, data?.message || `${r.status} ${r.statusText}: ${text}`);
  return data;
}

/// Keeps `map` (by name) equal to what `path` lists, by a list and then a watch from its resourceVersion;
/// lists again when a watch ends or is told its version is gone (410).
function follow(path, map, onChange) {
  const ctl = new AbortController();
  watches.push(ctl);
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        const list = await api('GET', path);
        map.clear();
        for (const o of list.items) map.set(o.metadata.name, o);
        onChange();
        const sep = path.includes('?') ? '&' : '?';
        const url = `${path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${list.metadata.resourceVersion}`;
        const r = await fetch(url, { headers: { Authorization: `Bearer ${token}` }, signal: ctl.signal });
        if (!r.ok) throw new ApiError(r.status, `watch ${path}: ${r.status}`);
        live(true);
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, i).trim();
            buf = buf.slice(i + 1);
            if (!line) continue;
            const ev = JSON.parse(line);
            if (ev.type === 'ERROR') throw new ApiError(ev.object.code, ev.object.message);
            if (ev.type === 'BOOKMARK') continue;
            if (ev.type === 'DELETED') map.delete(ev.object.metadata.name);
            else map.set(ev.object.metadata.name, ev.object);
            onChange();
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
        live(false);
        if (e.status === 401) return logout('The server no longer accepts this token.');
        await sleep(1000);
      }
    }
  })();
}

function live(on) {
  $('#live').classList.toggle('on', on);
}

function stopWatches() {
  for (const w of watches) w.abort();
  watches = [];
}

const isPaused = (vmi) => (vmi?.status?.conditions || []).some((c) => c.type === 'Paused' && c.status === 'True');
const ipOf = (vmi) => vmi?.status?.interfaces?.[0]?.ipAddress || '';

function button(action, name, label = action) {
  return `<button data-action="${action}" data-name="${esc(name)}">${esc(label)}</button>`;
}

function render() {
  const rows = [...vms.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).map((vm) => {
    const name = vm.metadata.name;
    const vmi = vmis.get(name);
    const status = vm.status?.printableStatus || 'Unknown';
    const running = vmi && vmi.status?.phase === 'Running';
    const actions = [
      running || status === 'Starting' ? button('stop', name, 'Stop') : button('start', name, 'Start'),
      button('restart', name, 'Restart'),
      running ? (isPaused(vmi) ? button('unpause', name, 'Unpause') : button('pause', name, 'Pause')) : '',
      button('open', name, 'Console'),
    ].join('');
    return `<tr data-vm="${esc(name)}"><td>${esc(name)}</td><td class="status status-${esc(status)}">${esc(status)}</td>` +
      `<td>${vm.status?.ready ? 'yes' : 'no'}</td><td>${esc(vmi?.status?.nodeName)}</td><td>${esc(ipOf(vmi))}</td>` +
      `<td class="actions">${actions}</td></tr>`;
  });
  $('#vms tbody').innerHTML = rows.join('') || '<tr><td colspan="6">No VMs in this namespace.</td></tr>';
  const lone = [...vmis.values()].filter((v) => !vms.has(v.metadata.name)).map((vmi) => {
    const name = vmi.metadata.name;
    const running = vmi.status?.phase === 'Running';
    const actions = [
      running ? (isPaused(vmi) ? button('unpause', name, 'Unpause') : button('pause', name, 'Pause')) : '',
      button('open', name, 'Console'),
    ].join('');
    return `<tr data-vmi="${esc(name)}"><td>${esc(name)}</td><td>${esc(vmi.status?.phase)}</td>` +
      `<td>${esc(vmi.status?.nodeName)}</td><td>${esc(ipOf(vmi))}</td><td class="actions">${actions}</td></tr>`;
  });
  $('#vmis tbody').innerHTML = lone.join('') || '<tr><td colspan="5">None.</td></tr>';
}

function renderEvents() {
  if (!selected) return;
  const mine = [...events.values()]
    .filter((e) => e.involvedObject?.name === selected)
    .sort((a, b) => String(b.lastTimestamp || b.eventTime).localeCompare(String(a.lastTimestamp || a.eventTime)));
  $('#events tbody').innerHTML = mine.map((e) =>
    `<tr><td>${esc(when(e.lastTimestamp || e.eventTime))}</td><td>${esc(e.type)}</td><td>${esc(e.reason)}</td>` +
    `<td>${esc(e.involvedObject?.kind)}/${esc(e.involvedObject?.name)}</td><td>${esc(e.count ?? 1)}</td>` +
    `<td>${esc(e.message)}</td></tr>`).join('') || '<tr><td colspan="6">No events.</td></tr>';
}

async function act(action, name) {
  $('#action-error').textContent = '';
  const path = ['pause', 'unpause'].includes(action)
    ? `${SUB}/namespaces/${ns}/virtualmachineinstances/${name}/${action}`
    : `${SUB}/namespaces/${ns}/virtualmachines/${name}/${action}`;
  try {
    await api('PUT', path, {});
  } catch (e) {
    $('#action-error').textContent = `${action} ${name}: ${e.message}`;
  }
}

function bearerProtocol() {
  const b64 = btoa(token).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  return `base64url.bearer.authorization.k8s.io.${b64}`;
}

function wsUrl(path) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
}

function closeSessions() {
  if (consoleWs) consoleWs.close();
  consoleWs = null;
  if (rfb) rfb.disconnect();
  rfb = null;
}

function showTab(tab) {
  for (const t of ['console', 'vnc', 'events']) $(`#tab-${t}`).hidden = t !== tab;
  for (const b of document.querySelectorAll('.tabs button')) b.classList.toggle('active', b.dataset.tab === tab);
  if (!selected) return;
  closeSessions();
  const vmi = vmis.get(selected);
  const running = vmi?.status?.phase === 'Running';
  if (tab === 'console') {
    if (!running) $('#console-state').textContent = `${selected} has no running instance: start it first.`;
    else openConsole(selected);
  } else if (tab === 'vnc') {
    if (!running) $('#vnc-state').textContent = `${selected} has no running instance: start it first.`;
    else openVnc(selected);
  } else {
    renderEvents();
  }
}

function openConsole(name) {
  if (!term) {
    term = new Terminal({ cursorBlink: true, rows: 24, cols: 100 });
    term.open($('#terminal'));
    term.onData((d) => consoleWs?.readyState === WebSocket.OPEN && consoleWs.send(new TextEncoder().encode(d)));
  }
  term.reset();
  const ws = new WebSocket(wsUrl(`${SUB}/namespaces/${ns}/virtualmachineinstances/${name}/console`),
    ['plain.kubevirt.io', bearerProtocol()]);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    $('#console-state').textContent = `Connected to ${name}'s serial console.`;
    term.focus();
  };
  ws.onmessage = (m) => term.write(typeof m.data === 'string' ? m.data : new Uint8Array(m.data));
  ws.onclose = (e) => {
    if (consoleWs === ws) $('#console-state').textContent = `Session ended${e.reason ? `: ${e.reason}` : '.'}`;
  };
  consoleWs = ws;
}

function openVnc(name) {
  $('#screen').innerHTML = '';
  const url = wsUrl(`${SUB}/namespaces/${ns}/virtualmachineinstances/${name}/vnc`);
  rfb = new RFB($('#screen'), url, { wsProtocols: ['plain.kubevirt.io', bearerProtocol()] });
  rfb.scaleViewport = true;
  rfb.addEventListener('connect', () => ($('#vnc-state').textContent = `Connected to ${name}'s screen.`));
  rfb.addEventListener('disconnect', (e) =>
    ($('#vnc-state').textContent = e.detail.clean ? 'Session ended.' : 'The VNC session failed or ended.'));
}

function select(name) {
  selected = name;
  $('#detail').hidden = false;
  $('#detail-title').textContent = name;
  showTab('console');
}

async function create(obj, contentType) {
  $('#create-result').className = '';
  try {
    const made = await api('POST', `${KV}/namespaces/${ns}/virtualmachines`, obj, contentType);
    $('#create-result').textContent = `Created ${made.metadata.name}.`;
  } catch (e) {
    $('#create-result').className = 'error';
    $('#create-result').textContent = e.message;
  }
}

function vmFromForm(f) {
  const name = f.name.value.trim();
  return {
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachine',
    metadata: { name },
    spec: {
      runStrategy: f.running.checked ? 'Always' : 'Halted',
      template: {
        metadata: { labels: { 'kubevirt.io/domain': name } },
        spec: {
          domain: {
            cpu: { cores: Number(f.cores.value) || 1 },
            memory: { guest: f.memory.value.trim() },
            devices: { disks: [{ name: 'containerdisk', disk: { bus: 'virtio' } }] },
          },
          volumes: [{ name: 'containerdisk', containerDisk: { image: f.image.value.trim() } }],
        },
      },
    },
  };
}

async function loadNamespaces() {
  const list = await api('GET', '/api/v1/namespaces');
  const names = list.items.map((n) => n.metadata.name).sort();
  if (!names.includes(ns)) ns = names.includes('default') ? 'default' : names[0];
  $('#namespace').innerHTML = names.map((n) => `<option ${n === ns ? 'selected' : ''}>${esc(n)}</option>`).join('');
}

function watchNamespace() {
  stopWatches();
  closeSessions();
  selected = null;
  $('#detail').hidden = true;
  follow(`${KV}/namespaces/${ns}/virtualmachines`, vms, render);
  follow(`${KV}/namespaces/${ns}/virtualmachineinstances`, vmis, render);
  follow(`/api/v1/namespaces/${ns}/events`, events, renderEvents);
}

async function login(t) {
  token = t;
  try {
    await loadNamespaces();
  } catch (e) {
    token = null;
    $('#login-error').textContent = e.status === 401 ? 'The server refused this token.' : e.message;
    return;
  }
  sessionStorage.setItem('kumo-token', t);
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#ns-box').hidden = false;
  $('#logout').hidden = false;
  watchNamespace();
}

function logout(message = '') {
  stopWatches();
  closeSessions();
  token = null;
  sessionStorage.removeItem('kumo-token');
  $('#app').hidden = true;
  $('#ns-box').hidden = true;
  $('#logout').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
}

$('#login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  login($('#token').value.trim());
});
$('#logout').addEventListener('click', () => logout());
$('#namespace').addEventListener('change', (e) => {
  ns = e.target.value;
  sessionStorage.setItem('kumo-namespace', ns);
  watchNamespace();
});
document.body.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-action]');
  if (!b) return;
  if (b.dataset.action === 'open') select(b.dataset.name);
  else act(b.dataset.action, b.dataset.name);
});
for (const b of document.querySelectorAll('.tabs button')) b.addEventListener('click', () => showTab(b.dataset.tab));
$('#create-form').addEventListener('submit', (e) => {
  e.preventDefault();
  create(vmFromForm(e.target));
});
$('#yaml-form').addEventListener('submit', (e) => {
  e.preventDefault();
  create($('#yaml').value, 'application/yaml');
});
if (token) login(token);
