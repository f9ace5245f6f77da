// The console's shell: who is signed in, which view is shown (from the fragment, which never
// reaches the server), and the views themselves.
import { getJson, showMessage } from './api.js';
import { showStudies } from './studies.js';
import { showStudy } from './viewer.js';
import { showModalities } from './modalities.js';
import { showNow, stopNow } from './now.js';
import { showAudit } from './audit.js';

const views = { studies: showStudies, study: showStudy, modalities: showModalities, now: showNow, audit: showAudit };
const viewerViews = new Set(['studies', 'study']);
let me = null;

async function route() {
  const name = (window.location.hash || '#studies').slice(1).split('/')[0];
  const view = views[name] && (viewerViews.has(name) || me.operator) ? name : 'studies';
  if (view !== 'now') stopNow();
  for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== `view-${view}`;
  for (const link of document.querySelectorAll('header nav a')) link.classList.toggle('active', link.dataset.view === (view === 'study' ? 'studies' : view));
  showMessage('');
  try {
    await views[view]();
  } catch (error) {
    showMessage(error.message);
  }
}

async function start() {
  me = await getJson('/console/api/me');
  document.getElementById('user').textContent = me.name;
  for (const link of document.querySelectorAll('.operator')) link.hidden = !me.operator;
  window.addEventListener('hashchange', route);
  await route();
}

start().catch((error) => showMessage(error.message));
