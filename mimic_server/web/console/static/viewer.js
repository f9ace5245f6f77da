// The study view: series on the left, one image at a time, scrolled with the wheel or the
// slider; window centre/width from the object (or the rendering's default), changed with the
// inputs or by dragging on the image. Each image is a DICOMweb rendered PNG.
import { postJson, renderedImage, instancePath, el, showMessage, dicomName } from './api.js';

const state = { study: null, series: [], seriesIndex: 0, imageIndex: 0, center: null, width: null, url: null, token: 0 };
let wired = false;

function images() {
  const series = state.series[state.seriesIndex];
  return series ? series.instances.flatMap((instance) =>
    Array.from({ length: instance.frames || 1 }, (_, frame) => ({ series, instance, frame: frame + 1 }))) : [];
}

// The view of the fragment '#study' (the study itself stays in this page's memory, never in
// the URL); without an opened study it goes back to the search.
export async function showStudy() {
  if (!state.study) window.location.hash = '#studies';
}

export async function openStudy(study) {
  const contents = await postJson('/console/api/study', { study: study.study });
  state.study = contents.study;
  state.series = contents.series;
  state.seriesIndex = 0;
  document.getElementById('study-partial').hidden = !contents.more; // a limit cut it short
  if (window.location.hash !== '#study') window.location.hash = '#study'; // Back returns to the search
  for (const section of document.querySelectorAll('.view')) section.hidden = section.id !== 'view-study';
  document.getElementById('study-title').textContent =
    [dicomName(study.PatientName), study.StudyDescription, study.StudyDate].filter(Boolean).join(' · ') || 'Study';
  wire();
  const list = document.getElementById('series-list');
  list.replaceChildren(...state.series.map((series, index) => {
    const item = el('li', { 'data-series': series.series },
      `${series.modality || ''} ${series.number ?? ''} ${series.description || ''}`.trim() || 'series',
      el('br'), `${series.instances.length} image(s)`);
    item.addEventListener('click', () => selectSeries(index));
    return item;
  }));
  await selectSeries(0);
}

async function selectSeries(index) {
  state.seriesIndex = index;
  for (const [i, item] of [...document.querySelectorAll('#series-list li')].entries()) item.classList.toggle('active', i === index);
  const slider = document.getElementById('image-index');
  slider.max = String(Math.max(0, images().length - 1));
  resetWindow();
  await show(0);
}

function resetWindow() {
  const first = images()[0];
  state.center = first ? first.instance.window_center : null;
  state.width = first ? first.instance.window_width : null;
  document.getElementById('window-center').value = state.center ?? '';
  document.getElementById('window-width').value = state.width ?? '';
}

async function show(index) {
  const all = images();
  if (!all.length) return;
  state.imageIndex = Math.max(0, Math.min(all.length - 1, index));
  const { series, instance, frame } = all[state.imageIndex];
  document.getElementById('image-index').value = String(state.imageIndex);
  document.getElementById('image-position').textContent = `${state.imageIndex + 1} / ${all.length}`;
  const path = instance.frames > 1
    ? `${instancePath(state.study, series.series, instance.instance)}/frames/${frame}/rendered`
    : `${instancePath(state.study, series.series, instance.instance)}/rendered`;
  const params = state.center !== null && state.width !== null
    ? { window: `${state.center},${state.width},linear` } : {};
  const token = ++state.token;
  const url = await renderedImage(path, params);
  if (token !== state.token) { URL.revokeObjectURL(url); return; } // a newer image was asked for
  const img = document.getElementById('frame');
  img.dataset.instance = instance.instance;
  img.dataset.frame = String(frame);
  img.dataset.window = params.window || '';
  img.src = url;
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = url;
}

function wire() {
  if (wired) return;
  wired = true;
  const img = document.getElementById('frame');
  const fail = (error) => showMessage(error.message);
  img.addEventListener('wheel', (event) => {
    event.preventDefault();
    show(state.imageIndex + (event.deltaY > 0 ? 1 : -1)).catch(fail);
  }, { passive: false });
  document.getElementById('image-index').addEventListener('input', (event) => show(Number(event.target.value)).catch(fail));
  const windowInput = () => {
    const center = Number(document.getElementById('window-center').value);
    const width = Number(document.getElementById('window-width').value);
    if (Number.isFinite(center) && Number.isFinite(width) && width >= 1) {
      state.center = center; state.width = width;
      show(state.imageIndex).catch(fail);
    }
  };
  document.getElementById('window-center').addEventListener('change', windowInput);
  document.getElementById('window-width').addEventListener('change', windowInput);
  document.getElementById('window-reset').addEventListener('click', () => { resetWindow(); show(state.imageIndex).catch(fail); });
  let drag = null;
  img.addEventListener('pointerdown', (event) => {
    drag = { x: event.clientX, y: event.clientY, center: state.center ?? 128, width: state.width ?? 256 };
    img.setPointerCapture(event.pointerId);
    event.preventDefault();
  });
  img.addEventListener('pointerup', () => {
    if (!drag) return;
    drag = null;
    document.getElementById('window-center').value = String(state.center);
    document.getElementById('window-width').value = String(state.width);
    show(state.imageIndex).catch(fail);
  });
  img.addEventListener('pointermove', (event) => {
    if (!drag) return;
    const scale = Math.max(1, drag.width / 256);
    state.width = Math.max(1, Math.round(drag.width + (event.clientX - drag.x) * scale));
    state.center = Math.round(drag.center + (event.clientY - drag.y) * scale);
  });
}
