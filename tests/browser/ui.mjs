// Drives the investigators' page in the machine's Chromium against a running service with
// real rows: search, infinite scroll over the cursor, event detail with the changes table,
// pivot to a trace, CSV export. Usage: node ui.mjs BASE_URL SCREENSHOT_PATH, with EXPECT (JSON)
// in the environment: { total, actor, actorCount, traceOf, traceCount, changeField, changeBefore,
// changeAfter, exportActorCount }.
import { chromium } from 'playwright-core';
import { readFile } from 'node:fs/promises';

const [base, screenshot] = process.argv.slice(2);
const expect = JSON.parse(process.env.EXPECT);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  console.log(`ok - ${what}`);
}

const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  const rows = page.locator('#timeline tbody tr');
  const status = page.locator('#status');

  // 1. The page opens on the newest events; scrolling loads every page exactly once.
  await page.goto(`${base}/v1/auditmanager/ui/`);
  await page.waitForFunction(() => document.querySelectorAll('#timeline tbody tr').length > 0);
  check(await rows.count() === Math.min(100, expect.total), 'the first page shows the newest 100 events');
  for (let i = 0; i < 20 && (await rows.count()) < expect.total; i++) {
    await page.locator('#sentinel').scrollIntoViewIfNeeded();
    await page.waitForTimeout(50);
    await page.waitForFunction(() => !document.querySelector('#status').textContent.includes('loading'));
  }
  await page.waitForFunction((n) => document.querySelector('#status').textContent === `${n} events.`, expect.total);
  const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
  check(ids.length === expect.total && new Set(ids).size === ids.length,
    `scrolling loaded all ${expect.total} events, each once`);
  const times = await rows.evaluateAll((trs) => trs.map((tr) => tr.cells[0].textContent));
  check(times.every((t, i) => i === 0 || times[i - 1] >= t), 'the timeline is newest first');
  const integrity = await rows.evaluateAll((trs) => trs.map((tr) => tr.cells[6].textContent));
  check(integrity.filter((t) => t === 'not yet sealed').length === expect.late
    && integrity.filter((t) => t === 'sealed').length === expect.total - expect.late,
    `the integrity column shows ${expect.late} rows not yet sealed and the rest sealed`);

  // 2. Search by actor (keyboard: type, Enter).
  await page.fill('input[name=actor_id]', expect.actor);
  await page.press('input[name=actor_id]', 'Enter');
  await page.waitForFunction((n) => document.querySelector('#status').textContent === `${n} event${n === 1 ? '' : 's'}.`, expect.actorCount);
  const actors = await rows.evaluateAll((trs) => trs.map((tr) => tr.cells[1].textContent));
  check(actors.length === expect.actorCount && actors.every((a) => a === expect.actor),
    `searching actor ${expect.actor} shows exactly its ${expect.actorCount} events`);
  check(page.url().includes(`actor_id=${encodeURIComponent(expect.actor)}`), 'the search is kept in the URL');
  await page.screenshot({ path: screenshot, fullPage: false });

  // 3. Open an event with the keyboard: the detail shows every column and the changes table.
  await page.fill('input[name=actor_id]', expect.traceOf.actor);
  await page.press('input[name=actor_id]', 'Enter');
  await page.waitForFunction(() => document.querySelector('#status').textContent.endsWith('.')
    && !document.querySelector('#status').textContent.startsWith('Searching'));
  const row = page.locator(`#timeline tbody tr[data-id="${expect.traceOf.id}"]`);
  await row.scrollIntoViewIfNeeded();
  await row.focus();
  await page.keyboard.press('Enter');
  await page.locator('#detail').waitFor({ state: 'visible' });
  check((await page.textContent('#detail-title')).includes(expect.traceOf.id), 'Enter on a row opens its detail');
  const fields = await page.locator('#fields dt').allTextContents();
  check(['id', 'occurred_at', 'ingested_at', 'actor_id', 'trace_id', 'outcome'].every((f) => fields.includes(f)),
    'the detail lists the row\'s columns');
  const change = await page.locator('#changes tbody tr').first().locator('td').allTextContents();
  check(change[0] === expect.changeField && change[1] === expect.changeBefore && change[2] === expect.changeAfter,
    `the changes table shows ${expect.changeField}: ${expect.changeBefore} → ${expect.changeAfter}`);
  check((await page.textContent('#details-json')).includes('"changes"'), 'the details JSON is shown');
  await page.waitForFunction(() => document.querySelector('#integrity-status').textContent !== 'checking…');
  check((await page.textContent('#integrity-status')).startsWith('sealed and verified'),
    `the detail verifies the row against its seal (${await page.textContent('#integrity-status')})`);

  // 4. Pivot: everything in this trace.
  await page.click('#by-trace');
  await page.waitForFunction((n) => document.querySelector('#status').textContent === `${n} event${n === 1 ? '' : 's'}.`, expect.traceCount);
  check(await page.inputValue('input[name=trace_id]') === expect.traceOf.trace_id, 'the pivot fills the trace id into the search');
  check(await rows.count() === expect.traceCount, `"everything in this trace" shows its ${expect.traceCount} events`);
  await page.keyboard.press('Escape');

  // 4b. A row changed after sealing is shown as failed.
  await page.fill('input[name=trace_id]', '');
  await page.fill('input[name=actor_id]', expect.tampered.actor);
  await page.press('input[name=actor_id]', 'Enter');
  await page.waitForFunction(() => /^\d+ events?\.$/.test(document.querySelector('#status').textContent));
  const tampered = page.locator(`#timeline tbody tr[data-id="${expect.tampered.id}"]`);
  for (let i = 0; i < 10 && (await tampered.count()) === 0; i++) {
    await page.locator('#sentinel').scrollIntoViewIfNeeded();
    await page.waitForTimeout(100);
  }
  await tampered.click();
  await page.waitForFunction(() => document.querySelector('#integrity-status').textContent !== 'checking…'
    && document.querySelector('#integrity-status').textContent !== '—');
  const verdict = await page.textContent('#integrity-status');
  check(verdict.startsWith('FAILED verification') && verdict.includes('changed after sealing'),
    `a row changed after sealing is shown as failed (${verdict})`);
  await page.keyboard.press('Escape');

  // 5. Export the current search as CSV.
  await page.fill('input[name=trace_id]', '');
  await page.fill('input[name=actor_id]', expect.actor);
  await page.press('input[name=actor_id]', 'Enter');
  await page.waitForFunction((n) => document.querySelector('#status').textContent === `${n} event${n === 1 ? '' : 's'}.`, expect.actorCount);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const csv = await readFile(await download.path(), 'utf8');
  const lines = csv.split('\r\n').filter((l) => l.length > 0);
  check(lines[0].startsWith('id,occurred_at'), 'the CSV starts with the column names');
  check(lines.length - 1 === expect.actorCount, `the CSV export holds the search's ${expect.actorCount} rows`);
  const [ndjson] = await Promise.all([page.waitForEvent('download'), page.click('#export-ndjson')]);
  const nd = (await readFile(await ndjson.path(), 'utf8')).split('\n').filter((l) => l);
  check(nd.length === expect.actorCount && nd.every((l) => JSON.parse(l).actor_id === expect.actor),
    'the NDJSON export holds the same rows');

  check(consoleErrors.length === 0, `no errors in the browser console (${consoleErrors.join('; ')})`);
} catch (e) {
  failed = true;
  console.error(e.stack || String(e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
