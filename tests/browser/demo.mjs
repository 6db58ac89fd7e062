// The demo page in headless Chromium (Debian's), driven by playwright-core. Run by tests/e2e/test_demo.py:
//   node demo.mjs <server http URL> <directory for screenshots>
// It prints STOP when the test should restart the server, and waits for STARTED on stdin; FILL when the test
// should write enough posts to fill more than a screen, then waits for FILLED; CHANGE when the test should edit
// and delete posts at the bottom of the feed, then waits for CHANGED; OK at the end.
import { chromium } from 'playwright-core';
import readline from 'node:readline';
import path from 'node:path';

const [base, shots] = process.argv.slice(2);
const T = Number(process.env.REALTIME_TEST_TIMEOUT || 10) * 1000; // the tests' unit of waiting
const input = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const pages = {};

function step(text) {
  console.log(`step: ${text}`);
}

async function hear(expected) {
  const { value } = await input.next();
  if (value?.trim() !== expected) throw new Error(`expected ${expected} on stdin, got ${value}`);
}

async function open(context, user, query = '') {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.log(`[${user}] ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`[${user}] page error: ${e.message}`));
  // every connection state the page shows, in order
  await page.addInitScript(() => {
    window.__states = [];
    document.addEventListener('DOMContentLoaded', () => {
      const box = document.querySelector('[data-testid=connection]');
      window.__states.push(box.dataset.state);
      new MutationObserver(() => {
        if (window.__states.at(-1) !== box.dataset.state) window.__states.push(box.dataset.state);
      }).observe(box, { attributes: true, attributeFilter: ['data-state'] });
    });
  });
  await page.goto(`${base}/demo?user=${user}${query}`);
  pages[user] = page;
  return page;
}

const state = (page, wanted, timeout = T * 3) =>
  page.locator(`[data-testid=connection][data-state=${wanted}]`).waitFor({ timeout });
const post = (page, id) => page.locator(`[data-post-id="${id}"]`);
const likes = (page, id) => post(page, id).locator('[data-testid=likes]');

async function expectText(locator, text, timeout = T * 2) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = (await locator.textContent({ timeout }))?.trim();
    if (last === text) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`expected ${JSON.stringify(text)}, still ${JSON.stringify(last)}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run'],
});
try {
  const context = await browser.newContext();

  step('two pages connect and show the feed');
  const alice = await open(context, 'alice');
  const bob = await open(context, 'bob');
  for (const page of [alice, bob]) {
    await state(page, 'connected');
    await post(page, 'b1').waitFor({ timeout: T * 2 });
  }
  await expectText(likes(bob, 'b1'), '0');

  step('a like in one page shows in the other');
  await post(alice, 'b1').locator('[data-testid=like]').click();
  await expectText(likes(alice, 'b1'), '1', 500); // optimistic: at once
  await expectText(likes(bob, 'b1'), '1');
  await post(alice, 'b1').locator('[data-testid=like][aria-pressed=true]:not(.pending)').waitFor({ timeout: T * 2 });

  step('presence: each page lists the other user online');
  await bob.locator('[data-testid=online] li', { hasText: 'alice' }).waitFor({ timeout: T * 2 });
  await alice.locator('[data-testid=online] li', { hasText: 'bob' }).waitFor({ timeout: T * 2 });

  step('typing in one page shows in the other');
  await post(alice, 'b1').locator('.comment-input').pressSequentially('hello <i>world</i>');
  await expectText(post(bob, 'b1').locator('.typing'), 'alice is typing…');

  step('a comment shows in the other page, as text');
  await post(alice, 'b1').locator('.comment-input').press('Enter');
  const comment = post(bob, 'b1').locator('.comments li', { hasText: 'hello <i>world</i>' });
  await comment.waitFor({ timeout: T * 2 });
  if (await post(bob, 'b1').locator('.comments i').count()) throw new Error('a comment was rendered as HTML');
  await expectText(post(bob, 'b1').locator('.typing'), '', T * 3); // user:stopped_typing

  step('the server restarts: the page shows reconnecting, then catches up');
  console.log('STOP');
  await hear('STARTED');
  await post(alice, 'b2').waitFor({ timeout: T * 4 }); // written while the server was down
  await expectText(likes(alice, 'b1'), '2', T * 4); // carol's like, also while it was down
  await state(alice, 'connected', T * 6);
  const states = await alice.evaluate(() => window.__states);
  if (!states.includes('reconnecting')) throw new Error(`the page never showed reconnecting: ${states}`);
  step(`states shown: ${states.join(' → ')}`);

  step('with WebSockets blocked, a page falls back to long-polling and works');
  const blocked = await context.newPage();
  let attempts = 0;
  await blocked.routeWebSocket(/\/ws$/, (ws) => { attempts++; ws.close({ code: 1011, reason: 'blocked by the test' }); });
  pages.carol = blocked;
  await blocked.goto(`${base}/demo?user=carol`);
  await state(blocked, 'polling', T * 4);
  if (attempts < 3) throw new Error(`polling after ${attempts} WebSocket attempts`);
  await post(blocked, 'b2').waitFor({ timeout: T * 2 });
  await expectText(likes(blocked, 'b2'), '0');
  await post(alice, 'b2').locator('[data-testid=like]').click(); // over the WebSocket in alice's page ...
  await expectText(likes(blocked, 'b2'), '1', T * 3); // ... arrives by long-polling in carol's
  await post(blocked, 'b2').locator('.comment-input').fill('sent from a polling page');
  await post(blocked, 'b2').locator('.comment-input').press('Enter');
  await post(alice, 'b2').locator('.comments li', { hasText: 'sent from a polling page' }).waitFor({ timeout: T * 3 });
  await post(blocked, 'b2').locator('.comments li:not(.pending)', { hasText: 'sent from a polling page' })
    .waitFor({ timeout: T * 3 });
  await post(blocked, 'b2').locator('[data-testid=like]').click(); // an optimistic like from the polling page
  await expectText(likes(blocked, 'b2'), '2', 500);
  await expectText(likes(alice, 'b2'), '2', T * 3);

  step('posts the page never scrolled to (so never joined post:{id} for): edits and deletes reach them');
  console.log('FILL');
  await hear('FILLED');
  const dave = await open(context, 'dave');
  await state(dave, 'connected');
  const height = dave.viewportSize().height;
  for (const id of ['b1', 'b2', 'f1']) {
    const box = await post(dave, id).boundingBox({ timeout: T * 2 });
    if (!box || box.y < height * 2) throw new Error(`post ${id} is not far below the fold (${box?.y})`);
  }
  console.log('CHANGE');
  await hear('CHANGED');
  await post(dave, 'b1').waitFor({ state: 'detached', timeout: T * 3 }); // deleted
  await post(dave, 'f1').waitFor({ state: 'detached', timeout: T * 3 }); // made private
  await expectText(post(dave, 'b2').locator('.text'), 'edited where nobody looked', T * 3);
  if (await post(dave, 'f2').count() !== 1) throw new Error('a post that did not change left the feed');
  await post(alice, 'b1').waitFor({ state: 'detached', timeout: T * 3 }); // and where it was seen
  console.log('OK');
} catch (err) {
  console.log(`FAIL ${err?.stack ?? err}`);
  for (const [user, page] of Object.entries(pages)) {
    await page.screenshot({ path: path.join(shots, `${user}.png`), fullPage: true }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser.close();
  process.exit(); // stdin stays open otherwise
}
