// The web console in headless Chromium (Debian's), driven by Playwright, as a user uses it: a refused token,
// then login; the VM seen Running (updated by watches); a line read from its serial console; stop and start;
// its events; a VM created from the form and a bad one refused with the server's reason; the server killed
// and started again under the open page (the test does it when this prints READY-FOR-RESTART, and answers
// "restarted" on stdin). Screenshots go to SHOTS. Run by tests/e2e/tests/web_console.rs: node ui/tests/console.mjs URL TOKEN VM SHOTS
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const [url, token, vm, shots] = process.argv.slice(2);
if (!shots) throw new Error('usage: console.mjs URL TOKEN VM SHOTS');
const minutes = (n) => n * 60_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // No background traffic: the browser talks only to the kumo server on loopback.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let page;
const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
try {
  // The server's certificate is from kumo's own CA, which this browser profile does not know.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 1000 } });
  page = await context.newPage();
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  // Chromium drops requests in flight when the host's interfaces change (ERR_NETWORK_CHANGED), and the node
  // agent adds veths as guests start: load again when that happens. The page's watches retry on their own.
  for (let i = 0; ; i++) {
    try {
      await page.goto(`${url}/ui/`);
      break;
    } catch (e) {
      if (i === 5 || !String(e).includes('ERR_NETWORK_CHANGED')) throw e;
      await page.waitForTimeout(1000);
    }
  }

  await page.fill('#token', 'not-a-token');
  await page.click('#login-form button');
  await page.locator('#login-error', { hasText: 'refused' }).waitFor();
  await shot('1-refused-token');
  await page.fill('#token', token);
  await page.click('#login-form button');

  const row = page.locator(`#vms tr[data-vm="${vm}"]`);
  const status = (s) => row.locator('td.status', { hasText: new RegExp(`^${s}$`) });
  await status('Running').waitFor({ timeout: minutes(3) });
  await row.locator('td', { hasText: /^\d+\.\d+\.\d+\.\d+$/ }).waitFor({ timeout: minutes(1) });
  await shot('2-running');

  await row.locator('button[data-action=open]').click();
  await page.locator('#console-state', { hasText: 'Connected' }).waitFor({ timeout: minutes(1) });
  // A row that is exactly the answer: the command line itself, or a shell's complaint about a mangled one,
  // would also contain it.
  const answer = page.locator('.xterm-rows > div', { hasText: /^\s*from-the-browser-42\s*$/ });
  // The shell may still be starting (keys typed during boot are lost): ask until it answers.
  for (let i = 0; ; i++) {
    await page.locator('#terminal').click();
    await page.keyboard.type('echo from-the-browser-$((6*7))');
    await page.keyboard.press('Enter');
    try {
      await answer.waitFor({ timeout: 10_000 });
      break;
    } catch (e) {
      if (i === 11) throw e;
    }
  }
  await shot('3-serial-console');

  // VNC in the page (noVNC): connected, with the guest's screen drawn on its canvas.
  await page.click('.tabs button[data-tab=vnc]');
  await page.locator('#vnc-state', { hasText: 'Connected' }).waitFor({ timeout: minutes(1) });
  await page.locator('#screen canvas').waitFor();
  await page.waitForTimeout(1000);
  await shot('3b-vnc');
  await page.click('.tabs button[data-tab=console]');
  await page.locator('#console-state', { hasText: 'Connected' }).waitFor({ timeout: minutes(1) });

  await row.locator('button[data-action=stop]').click();
  await status('Stopped').waitFor({ timeout: minutes(2) });
  await page.locator('#console-state', { hasText: 'Session ended' }).waitFor({ timeout: minutes(1) });
  await shot('4-stopped');
  await row.locator('button[data-action=start]').click();
  await status('Running').waitFor({ timeout: minutes(3) });
  await shot('5-started-again');

  await page.click('.tabs button[data-tab=events]');
  await page.locator('#events tbody tr td', { hasText: 'Started' }).first().waitFor({ timeout: minutes(1) });
  await shot('6-events');

  await page.fill('#create-form input[name=name]', 'from-the-form');
  await page.uncheck('#create-form input[name=running]');
  await page.click('#create-form button[type=submit]');
  await page.locator('#vms tr[data-vm="from-the-form"] td.status', { hasText: 'Stopped' }).waitFor();
  await page.fill('#create-form input[name=name]', 'bad-memory');
  await page.fill('#create-form input[name=memory]', 'lots');
  await page.click('#create-form button[type=submit]');
  await page.locator('#create-result.error', { hasText: 'memory' }).waitFor();
  await shot('7-created-and-refused');
  console.log(`create error shown: ${await page.locator('#create-result').textContent()}`);

  // The server is SIGKILLed and started again by the test while the page stays open: the page's watches
  // follow it back, and a VM made while it was away shows up without a reload.
  console.log('READY-FOR-RESTART');
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (line.trim() === 'restarted') break;
  }
  await page.locator('#vms tr[data-vm="after-restart"]').waitFor({ timeout: minutes(2) });
  await page.locator('#live.on').waitFor({ timeout: minutes(1) });
  await status('Running').waitFor({ timeout: minutes(1) });
  await shot('8-after-server-restart');
} catch (e) {
  if (page) await shot('failure').catch(() => {});
  console.log(`page text at failure:\n${page ? await page.locator('body').innerText().catch(() => '') : ''}`);
  throw e;
} finally {
  await browser.close();
}
console.log('web console: all steps passed');
