// Calls to the console's JSON endpoints: same origin, the session cookie, JSON bodies
// (searches never go into a URL).

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function answer(response) {
  if (response.status === 401) { window.location.assign('/auth/login'); throw new ApiError(401, 'sign in first'); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error || `HTTP ${response.status}`);
  return body;
}

export async function getJson(path) {
  return answer(await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/json' } }));
}

export async function postJson(path, body) {
  return answer(await fetch(path, {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(body),
  }));
}

// A DICOMweb rendered image as a blob URL (PNG: exact pixels); the caller revokes it.
export async function renderedImage(path, params) {
  const query = new URLSearchParams(params || {}).toString();
  const response = await fetch(path + (query ? `?${query}` : ''), {
    credentials: 'same-origin', headers: { Accept: 'image/png' },
  });
  if (!response.ok) throw new ApiError(response.status, `image: HTTP ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

export function instancePath(study, series, instance) {
  const e = encodeURIComponent;
  return `/dicomweb/studies/${e(study)}/series/${e(series)}/instances/${e(instance)}`;
}

// Small DOM helpers: data goes in as text nodes, never parsed as markup.
export function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'className') node.className = value; else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function showMessage(text) {
  const message = document.getElementById('message');
  message.textContent = text || '';
  message.hidden = !text;
}

export function formValues(form) {
  const values = {};
  for (const [name, value] of new FormData(form).entries()) values[name] = String(value).trim();
  return values;
}

export function dicomName(value) {
  return value ? String(value).replaceAll('^', ' ').trim() : '';
}

export function dicomDate(value) {
  const text = value ? String(value) : '';
  return text.length === 8 ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}` : text;
}
