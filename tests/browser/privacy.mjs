// The investigators' page shows personal data as the reader may see it: without `pii`,
// "[encrypted]"; after the subject was forgotten, "[erased]"; never the plaintext.
// Usage: node privacy.mjs BASE_URL, with EXPECT (JSON) in the environment:
// { encrypted: {id, resource}, erased: {id, resource}, secrets: [..] }.
import { chromium } from 'playwright-core';

const [base] = process.argv.slice(2);
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
  const page = await (await browser.newContext({ viewport: { width: 1440, height: 900 } })).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${base}/v1/auditmanager/ui/`);
  await page.waitForFunction(() => document.querySelectorAll('#timeline tbody tr').length > 0);
  for (const [want, ev] of [['[encrypted]', expect.encrypted], ['[erased]', expect.erased]]) {
    await page.fill('input[name=resource_id]', ev.resource);
    await page.press('input[name=resource_id]', 'Enter');
    await page.waitForFunction(() => /^\d+ events?\.$/.test(document.querySelector('#status').textContent));
    const row = page.locator(`#timeline tbody tr[data-id="${ev.id}"]`);
    await row.click();
    await page.locator('#detail').waitFor({ state: 'visible' });
    const change = await page.locator('#changes tbody tr').first().locator('td').allTextContents();
    check(change[0] === 'national_id' && change[1] === want,
      `event ${ev.id}: the changes table shows national_id as ${want} (${change.join(' | ')})`);
    const text = await page.evaluate(() => document.body.innerText);
    check(expect.secrets.every((s) => !text.includes(s)), `event ${ev.id}: no plaintext on the page`);
    await page.keyboard.press('Escape');
  }
  check(errors.length === 0, `no errors on the page (${errors.join('; ')})`);
} catch (e) {
  failed = true;
  console.error(e.stack || String(e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
