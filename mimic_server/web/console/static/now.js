// Now: the open associations of `mimic serve` and per-minute charts (SVG drawn here).
import { getJson, el } from './api.js';

const SVG = 'http://www.w3.org/2000/svg';
let timer = null;

export function stopNow() {
  if (timer !== null) { clearInterval(timer); timer = null; }
}

export async function showNow() {
  await refresh();
  if (timer === null) timer = setInterval(() => { refresh().catch(() => {}); }, 5000);
}

function bytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0; let v = n || 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

async function refresh() {
  const status = await getJson('/console/api/now');
  const body = document.querySelector('#association-list tbody');
  const rows = status.associations.map((a) => el('tr', {},
    el('td', {}, a.peer), el('td', {}, a.calling_ae), el('td', {}, a.identity),
    el('td', {}, a.user || ''), el('td', {}, a.service || 'idle'), el('td', {}, a.objects),
    el('td', {}, bytes(a.bytes)), el('td', {}, `${Math.round(a.seconds)} s`)));
  body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: '8', className: 'note' }, 'No open association.'))]));
  const charts = document.getElementById('charts');
  charts.replaceChildren(...['stores', 'queries', 'failures'].map((name) => chart(name, status.minutes || [])));
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
  return node;
}

function chart(name, minutes) {
  const width = 360; const height = 120; const pad = 20;
  const values = minutes.map((m) => m[name] || 0);
  const top = Math.max(1, ...values);
  const root = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `${name} per minute` });
  const bar = (width - pad) / Math.max(1, values.length);
  values.forEach((v, i) => {
    const h = (height - 2 * pad) * v / top;
    const rect = svg('rect', { class: name, x: pad + i * bar, y: height - pad - h, width: Math.max(1, bar - 1), height: h });
    const title = svg('title', {});
    title.textContent = `${minutes[i].minute}: ${v}`;
    rect.append(title);
    root.append(rect);
  });
  const label = svg('text', { x: 2, y: 12 });
  label.textContent = `max ${top}`;
  root.append(label);
  const axis = svg('text', { x: pad, y: height - 4 });
  axis.textContent = minutes.length ? `${minutes[0].minute.slice(11, 16)} … ${minutes[minutes.length - 1].minute.slice(11, 16)} UTC` : '';
  root.append(axis);
  return el('figure', { 'data-chart': name }, root, el('figcaption', {}, `${name} per minute (total ${values.reduce((a, b) => a + b, 0)})`));
}
