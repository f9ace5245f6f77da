// Studies: the search (POST body, never the URL), thumbnails, and opening a study.
import { postJson, renderedImage, instancePath, el, showMessage, formValues, dicomName, dicomDate } from './api.js';
import { openStudy } from './viewer.js';

let wired = false;
let thumbnails = [];

export async function showStudies() {
  if (wired) return;
  wired = true;
  document.getElementById('study-search').addEventListener('submit', (event) => {
    event.preventDefault();
    search(event.target).catch((error) => showMessage(error.message));
  });
}

async function search(form) {
  showMessage('');
  const result = await postJson('/console/api/studies', formValues(form));
  const body = document.querySelector('#study-results tbody');
  for (const url of thumbnails) URL.revokeObjectURL(url);
  thumbnails = [];
  body.replaceChildren();
  for (const study of result.studies) {
    const thumbnail = el('img', { className: 'thumbnail', alt: '' });
    const row = el('tr', { className: 'link', 'data-study': study.study },
      el('td', {}, thumbnail),
      el('td', { className: 'patient-name' }, dicomName(study.PatientName)),
      el('td', {}, study.PatientID || ''),
      el('td', {}, dicomDate(study.StudyDate)),
      el('td', {}, [].concat(study.ModalitiesInStudy || []).join(', ')),
      el('td', {}, study.AccessionNumber || ''),
      el('td', {}, study.StudyDescription || ''),
      el('td', {}, study.NumberOfStudyRelatedInstances ?? ''));
    row.addEventListener('click', () => {
      openStudy(study).catch((error) => showMessage(error.message));
    });
    body.append(row);
    if (study.thumbnail) {
      renderedImage(`${instancePath(study.study, study.thumbnail.series, study.thumbnail.instance)}/thumbnail`, { viewport: '64,64' })
        .then((url) => { thumbnails.push(url); thumbnail.src = url; })
        .catch(() => { thumbnail.alt = 'no preview'; });
    }
  }
  document.getElementById('study-more').hidden = !result.more;
  if (!result.studies.length) showMessage('No study matches.');
}
