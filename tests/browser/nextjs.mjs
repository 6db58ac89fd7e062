// The Next.js example (examples/nextjs) in headless Chromium (Debian's), driven by playwright-core: two
// browser contexts (alice and bob, each with its own session). Run by tests/e2e/test_nextjs.py:
//   node nextjs.mjs <the app's URL> <directory for screenshots>
// It prints STOP when the test should stop the realtime server, and waits for STOPPED on stdin; START when the
// test should start it again (after the writes made meanwhile are in the stream), and waits for STARTED; OK at
// the end.
import { chromium } from 'playwright-core';
import readline from 'node:readline';
import path from 'node:path';

const mode = process.argv[2] === 'notice' ? 'notice' : 'main';
const [base, shots] = process.argv.slice(mode === 'notice' ? 3 : 2);
const T = Number(process.env.REALTIME_TEST_TIMEOUT || 10) * 1000; // the tests' unit of waiting
const OUTAGE_TEXT = 'written while the server was down';
const lines = readline.createInterface({ input: process.stdin });
const input = lines[Symbol.asyncIterator]();

const step = (text) => console.log(`step: ${text}`);

async function hear(expected) {
  const { value } = await input.next();
  if (value?.trim() !== expected) throw new Error(`expected ${expected} on stdin, got ${value}`);
}

const missing = []; // responses 404 (a favicon asked for on every load was one)

async function open(context, user, app = base) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[${user}] ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`[${user}] page error: ${e.message}`));
  page.on('response', (r) => { if (r.status() === 404) missing.push(r.url()); });
  page.sockets = 0;
  page.on('websocket', () => { page.sockets++; });
  await page.goto(`${app}/?user=${user}`);
  return page;
}

const badge = (page) => page.locator('[data-testid=connection]');
const state = (page, wanted, timeout = T * 3) =>
  page.locator(`[data-testid=connection][data-state=${wanted}]`).waitFor({ timeout });
const post = (page, id) => page.locator(`[data-post-id="${id}"]`);
const likes = (page, id) => post(page, id).locator('[data-testid=likes]');
const likeButton = (page, id) => post(page, id).locator('[data-testid=like]');
const banner = (page) => page.locator('[data-testid=new-posts]');

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

async function compose(page, text) {
  await page.locator('[data-testid=compose]').fill(text);
  await page.locator('form.composer button[type=submit]').click();
}

async function postIdOf(page, text) {
  const item = page.locator('[data-post-id]', { has: page.locator('[data-testid=text]', { hasText: text }) });
  await item.first().waitFor({ timeout: T * 2 });
  return item.first().getAttribute('data-post-id');
}

const launched = chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run'],
});

if (mode === 'notice') {
  // node nextjs.mjs notice <app> <shots> <text> <state>: the page of an app started with a configuration
  // problem says <text> on screen, and its badge is in <state>.
  const [text, wanted] = process.argv.slice(5);
  const browser = await launched;
  try {
    const page = await open(await browser.newContext(), 'alice');
    await page.getByText(text).first().waitFor({ timeout: T * 3 });
    await state(page, wanted);
    await page.screenshot({ path: path.join(shots, `notice-${wanted}.png`) });
    console.log('OK');
  } catch (err) {
    console.log(`FAILED: ${err?.stack ?? err}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
    lines.close();
  }
  process.exit();
}

const browser = await launched;
const pages = {};
try {
  const contexts = { alice: await browser.newContext(), bob: await browser.newContext() };

  step('two browser contexts show the feed, each over one WebSocket');
  const alice = pages.alice = await open(contexts.alice, 'alice');
  const bob = pages.bob = await open(contexts.bob, 'bob');
  for (const page of [alice, bob]) {
    await state(page, 'connected');
    await post(page, 'n1').waitFor({ timeout: T * 2 });
    if (page.sockets !== 1) throw new Error(`the page opened ${page.sockets} WebSockets, not 1`);
  }
  await expectText(likes(bob, 'n1'), '0');

  step('a like in one shows in the other');
  await likeButton(alice, 'n1').click();
  await expectText(likes(alice, 'n1'), '1', 500); // optimistic: at once
  await expectText(likes(bob, 'n1'), '1'); // through MongoDB, the watcher and the server
  await post(alice, 'n1').locator('[data-testid=like][data-pending=false]').waitFor({ timeout: T * 2 });

  step('a comment, and who is typing it, show in the other');
  const box = post(alice, 'n1').locator('[data-testid=comment]');
  await box.pressSequentially('nice post', { delay: 20 });
  await expectText(post(bob, 'n1').locator('[data-testid=typing]'), 'alice typing…');
  await box.press('Enter');
  await expectText(post(bob, 'n1').locator('[data-testid=comments] li'), 'alice nice post');

  step('a like whose API call fails is rolled back, after its retries');
  let calls = 0;
  await bob.route('**/api/like', (route) => {
    calls++;
    return route.fulfill({ status: 503, contentType: 'application/json', body: '{"error":{"code":"down"}}' });
  });
  await likeButton(bob, 'n1').click();
  await expectText(likes(bob, 'n1'), '2', 500); // optimistic
  await post(bob, 'n1').locator('[data-testid=like-error]').waitFor({ timeout: T * 2 });
  await expectText(likes(bob, 'n1'), '1', 500); // rolled back
  if (await likeButton(bob, 'n1').getAttribute('aria-pressed') !== 'false') throw new Error('still shown as liked');
  if (calls !== 4) throw new Error(`the like was sent ${calls} times, not 4 (a try and 3 retries)`);
  await bob.unroute('**/api/like');
  await expectText(likes(alice, 'n1'), '1', 500); // nothing was written

  step('a post or comment the API fails to write says so, and keeps the text');
  await bob.route('**/api/posts', (route) => route.fulfill({ status: 500, contentType: 'application/json',
    body: '{"error":{"code":"internal","message":"something went wrong"}}' }));
  await compose(bob, 'this one fails');
  await expectText(bob.locator('[data-testid=compose-error]'), 'not posted: something went wrong');
  if (await bob.locator('[data-testid=compose]').inputValue() !== 'this one fails') throw new Error('the text was lost');
  await bob.unroute('**/api/posts');
  await bob.locator('[data-testid=compose]').fill('');
  await bob.route('**/api/comments', (route) => route.abort('connectionrefused'));
  const bobBox = post(bob, 'n1').locator('[data-testid=comment]');
  await bobBox.fill('this comment fails');
  await bobBox.press('Enter');
  await expectText(post(bob, 'n1').locator('[data-testid=comment-error]'), 'not sent: the app could not be reached');
  if (await bobBox.inputValue() !== 'this comment fails') throw new Error('the comment was lost');
  await bob.unroute('**/api/comments');
  await bobBox.fill('');

  step('a long unbroken word does not widen the page');
  await compose(alice, 'x'.repeat(400));
  await postIdOf(alice, 'x'.repeat(400));
  const wide = await alice.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth);
  if (wide) throw new Error('the page scrolls sideways');

  step('a new post raises the banner in the other page');
  await compose(alice, 'hello from alice');
  const hello = await postIdOf(alice, 'hello from alice'); // the author's own post shows at once
  await expectText(banner(bob), '2 new posts'); // (with the long word's)
  if (await post(bob, hello).count()) throw new Error('the new post showed before the banner was clicked');
  await banner(bob).click();
  await post(bob, hello).waitFor({ timeout: T });
  if (await banner(bob).count()) throw new Error('the banner stayed');
  if (await banner(alice).count()) throw new Error("the author's own post raised a banner");

  step('a blocked WebSocket falls back to polling, and back when it works again');
  let blocked = true;
  await contexts.alice.routeWebSocket(/\/ws$/, (ws) => {
    if (blocked) ws.close({ code: 1013, reason: 'blocked by the test' });
    else ws.connectToServer();
  });
  await alice.reload();
  await state(alice, 'polling', T * 4);
  if (await badge(alice).getAttribute('data-transport') !== 'polling') throw new Error('not polling');
  await likeButton(bob, hello).click();
  await expectText(likes(alice, hello), '1'); // by long-polling
  blocked = false;
  await state(alice, 'connected', T * 4); // the client retried the WebSocket
  if (await badge(alice).getAttribute('data-transport') !== 'websocket') throw new Error('not back on the WebSocket');
  await likeButton(bob, 'n1').click();
  await expectText(likes(alice, 'n1'), '2'); // over the WebSocket again

  step('the realtime server restarts: what was written meanwhile arrives, without a gap');
  await alice.screenshot({ path: path.join(shots, 'alice-before-restart.png') });
  console.log('STOP');
  await hear('STOPPED');
  await state(alice, 'reconnecting', T * 2).catch(async () => state(alice, 'polling', T));
  const ssr = await fetch(`${base}/?user=carol`, { signal: AbortSignal.timeout(T * 2) });
  const html = await ssr.text();
  if (ssr.status !== 200 || !html.includes('Live updates are off') || !html.includes('the first post')) {
    throw new Error(`the page with the realtime server down: HTTP ${ssr.status}, ${html.slice(0, 300)}`);
  }
  const carol = pages.carol = await open(await browser.newContext(), 'carol');
  await state(carol, 'offline');
  await carol.locator('[data-testid=offline]').waitFor({ timeout: T });
  await likeButton(bob, hello).click(); // bob unlikes, with the server down: the API writes to MongoDB
  await expectText(likes(bob, hello), '0', 500);
  await compose(bob, OUTAGE_TEXT);
  await postIdOf(bob, OUTAGE_TEXT);
  console.log('START');
  await hear('STARTED');
  await state(alice, 'connected', T * 6);
  await state(carol, 'connected', T * 6); // the page read during the outage goes live by itself
  await expectText(likes(carol, hello), '0');
  await expectText(likes(alice, hello), '0'); // the unlike made during the outage
  await expectText(banner(alice), '1 new post'); // the post written during the outage
  await banner(alice).click();
  const outage = await postIdOf(alice, OUTAGE_TEXT);
  await state(bob, 'connected', T * 6);
  await likeButton(alice, outage).click(); // and live again, both ways
  await expectText(likes(bob, outage), '1');
  await expectText(likes(carol, outage), '1'); // (carol's page shows the post since its refresh)
  if (missing.length) throw new Error(`404s: ${missing.join(', ')}`);

  await alice.screenshot({ path: path.join(shots, 'alice.png') });
  await bob.screenshot({ path: path.join(shots, 'bob.png') });
  console.log('OK');
} catch (err) {
  for (const [user, page] of Object.entries(pages)) {
    await page.screenshot({ path: path.join(shots, `${user}-failure.png`) }).catch(() => {});
  }
  console.log(`FAILED: ${err?.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close(); // stdin stays open: without this, node would wait on it
}
