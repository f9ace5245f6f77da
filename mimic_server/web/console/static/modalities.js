// Modalities: every trust entry, its AE titles, services, expiry, activity; revoked greyed.
import { getJson, el } from './api.js';

function day(iso) { return iso ? iso.slice(0, 10) : ''; }
function moment(iso) { return iso ? iso.replace('T', ' ').slice(0, 19) : 'never'; }

export async function showModalities() {
  const { modalities } = await getJson('/console/api/modalities');
  const body = document.querySelector('#modality-list tbody');
  body.replaceChildren(...modalities.map((m) => {
    let expiry = day(m.expires);
    let expiryClass = null;
    if (m.expired) { expiry += ' (expired)'; expiryClass = 'bad'; } else if (m.expires_soon) { expiry += ' (soon)'; expiryClass = 'warn'; }
    return el('tr', { className: m.revoked ? 'revoked' : null, 'data-name': m.name },
      el('td', {}, m.name, m.revoked ? ' (revoked)' : ''),
      el('td', { title: m.fingerprint }, `${m.common_name} (${m.kind})`),
      el('td', {}, m.ae_titles.join(', ') || 'any'),
      el('td', {}, m.services.join(', ') || (m.revoked ? '' : 'none')),
      el('td', { className: expiryClass }, expiry),
      el('td', {}, moment(m.last_association)),
      el('td', {}, m.objects_stored),
      el('td', {}, moment(m.last_stored)));
  }));
}
