// Drives the operator console in headless Chromium (Debian's, through playwright-core):
// sign in at the loopback OIDC issuer, find the study, open it, read the image's pixels,
// change the window, scroll, then the modalities, now and audit pages. Prints one JSON
// document for the pytest that started everything (tests/e2e/test_console_browser.py).
//
// Input (environment): CONSOLE_URL, CONSOLE_PATIENT_NAME, CONSOLE_STUDY, CONSOLE_OUT (a
// directory for screenshots), CONSOLE_ISSUER_SPKI (the issuer certificate's SPKI SHA-256,
// base64: only that self-signed key is accepted, every other certificate error stays one).
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.CONSOLE_URL;
const patientName = process.env.CONSOLE_PATIENT_NAME;
const study = process.env.CONSOLE_STUDY;
const out = process.env.CONSOLE_OUT;
const profile = mkdtempSync(join(tmpdir(), 'mimic-chromium-'));

// A fresh profile directory each run (Playwright passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--ignore-certificate-errors-spki-list=${process.env.CONSOLE_ISSUER_SPKI}`,
  ],
  viewport: { width: 1400, height: 900 },
  deviceScaleFactor: 1,
  timeout: 60000,
});
const result = { urls: [], console_errors: [], csp_violations: [] };
try {
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on('request', (request) => result.urls.push(request.url()));
  page.on('console', (message) => { if (message.type() === 'error') result.console_errors.push(message.text()); });
  await page.exposeFunction('reportViolation', (text) => result.csp_violations.push(text));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      window.reportViolation(`${event.violatedDirective} ${event.blockedURI}`);
    });
  });

  // Sign in: / -> /auth/login -> the issuer's /authorize -> /auth/callback -> /
  await page.goto(`${base}/`);
  await page.waitForFunction(() => document.getElementById('user').textContent.length > 0);
  result.signed_in_as = await page.textContent('#user');
  result.final_url = page.url();

  // Studies: search by patient name (a POST body), see the thumbnail.
  await page.fill('#study-search input[name=patient_name]', patientName.split('^')[0]);
  await page.click('#study-search button[type=submit]');
  const row = page.locator(`#study-results tr[data-study="${study}"]`);
  await row.waitFor();
  result.study_row = await row.locator('td').allInnerTexts();
  await page.waitForFunction((uid) => {
    const img = document.querySelector(`#study-results tr[data-study="${uid}"] img.thumbnail`);
    return img && img.complete && img.naturalWidth > 0;
  }, study);
  result.thumbnail = await row.locator('img.thumbnail').evaluate((img) => [img.naturalWidth, img.naturalHeight]);

  // The study view: the first image with the object's window.
  await row.click();
  const pixelsOf = async () => page.locator('#frame').evaluate((img) => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const g = canvas.getContext('2d');
    g.drawImage(img, 0, 0);
    const rgba = g.getImageData(0, 0, canvas.width, canvas.height).data;
    const gray = [];
    for (let i = 0; i < rgba.length; i += 4) gray.push(rgba[i]);
    return { width: canvas.width, height: canvas.height, instance: img.dataset.instance,
             window: img.dataset.window, gray };
  });
  const loaded = (instance, window) => page.waitForFunction(([uid, win]) => {
    const img = document.getElementById('frame');
    return img.complete && img.naturalWidth > 0 && img.dataset.instance === uid &&
      (win === null || img.dataset.window === win);
  }, [instance, window]);
  await page.waitForFunction(() => document.getElementById('frame').dataset.instance);
  const firstInstance = await page.locator('#frame').evaluate((img) => img.dataset.instance);
  await loaded(firstInstance, null);
  result.first = await pixelsOf();
  await page.locator('#frame').screenshot({ path: join(out, 'first.png') });
  result.series = await page.locator('#series-list li').allInnerTexts();
  result.study_partial_hidden = await page.locator('#study-partial').isHidden(); // a whole study

  // Window/level from the inputs.
  await page.fill('#window-center', '100');
  await page.fill('#window-width', '1000');
  await page.dispatchEvent('#window-width', 'change');
  await loaded(firstInstance, '100,1000,linear');
  result.windowed = await pixelsOf();
  await page.locator('#frame').screenshot({ path: join(out, 'windowed.png') });

  // Scroll to the next image (the window stays).
  await page.locator('#frame').hover();
  await page.mouse.wheel(0, 120);
  await page.waitForFunction((uid) => document.getElementById('frame').dataset.instance !== uid, firstInstance);
  const secondInstance = await page.locator('#frame').evaluate((img) => img.dataset.instance);
  await loaded(secondInstance, '100,1000,linear');
  result.second = await pixelsOf();
  result.position = await page.textContent('#image-position');
  await page.screenshot({ path: join(out, 'study.png') });

  // Back to the search, its results still there.
  await page.click('header nav a[data-view=studies]');
  await page.locator('#view-studies').waitFor({ state: 'visible' });
  result.back_to_search = await page.locator('#study-results tbody tr').count();
  result.study_fragment = page.url().split('#')[1] || '';

  // Modalities.
  await page.goto(`${base}/#modalities`);
  await page.locator('#modality-list tbody tr').first().waitFor();
  result.modalities = await page.locator('#modality-list tbody tr').evaluateAll((rows) => rows.map((r) => ({
    name: r.dataset.name, revoked: r.classList.contains('revoked'),
    cells: [...r.querySelectorAll('td')].map((td) => td.textContent),
    warn: [...r.querySelectorAll('td.warn, td.bad')].map((td) => td.textContent),
  })));

  await page.screenshot({ path: join(out, 'modalities.png') });

  // Now: the association the test keeps open, and the charts.
  await page.click('header nav a[data-view=now]');
  await page.locator('#charts figure').first().waitFor();
  result.associations = await page.locator('#association-list tbody tr').evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
  await page.screenshot({ path: join(out, 'now.png'), fullPage: true });
  result.charts = await page.locator('#charts figure').evaluateAll((figures) => figures.map((f) => ({
    name: f.dataset.chart, bars: f.querySelectorAll('rect').length, caption: f.querySelector('figcaption').textContent,
  })));

  // Audit trail, filtered by the study.
  await page.click('header nav a[data-view=audit]');
  await page.fill('#audit-search input[name=study]', study);
  await page.click('#audit-search button[type=submit]');
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll('#audit-list tbody tr');
    return rows.length > 0 && [...rows].every((r) => r.textContent.includes(document.querySelector('#audit-search input[name=study]').value));
  });
  result.audit = await page.locator('#audit-list tbody tr').evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)));
  await page.screenshot({ path: join(out, 'audit.png'), fullPage: true });

  // Sign out: the session ends.
  await page.click('header form button[type=submit]');
  await page.waitForURL(`${base}/signed-out`);
  result.after_sign_out = await page.evaluate(async () => (await fetch('/console/api/me')).status);
} catch (error) {
  result.error = String(error && error.stack || error);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
writeFileSync(join(out, 'result.json'), JSON.stringify(result));
process.stdout.write(JSON.stringify({ ok: !result.error }) + '\n');
