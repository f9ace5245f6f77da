// Audit trail: filter by event, identity, study and time (POST body: study UIDs stay out of URLs).
import { postJson, el, showMessage, formValues } from './api.js';

let wired = false;
const OUTCOMES = { 0: 'success', 4: 'minor failure', 8: 'serious failure', 12: 'major failure' };

export async function showAudit() {
  if (!wired) {
    wired = true;
    document.getElementById('audit-search').addEventListener('submit', (event) => {
      event.preventDefault();
      load(event.target).catch((error) => showMessage(error.message));
    });
  }
  await load(document.getElementById('audit-search'));
}

async function load(form) {
  const values = formValues(form);
  for (const name of ['since', 'until']) {
    if (values[name]) values[name] = new Date(values[name]).toISOString();
  }
  const { records, more } = await postJson('/console/api/audit', values);
  const body = document.querySelector('#audit-list tbody');
  body.replaceChildren(...records.map((r) => el('tr', { 'data-event': r.event },
    el('td', {}, r.time.replace('T', ' ').slice(0, 19)),
    el('td', {}, r.event_name || r.event), el('td', {}, r.event_type || ''),
    el('td', {}, OUTCOMES[r.outcome] ?? r.outcome), el('td', {}, r.identity || ''),
    el('td', {}, r.calling_ae || ''), el('td', {}, r.user || ''),
    el('td', {}, (r.studies || []).join(', ')))));
  document.getElementById('audit-more').hidden = !more;
}
