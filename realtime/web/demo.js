// The demo page (REALTIME_DEMO=true only): a live feed on /client/realtime.js. Every piece of user content is
// put in the page with textContent, never as HTML.
import { RealtimeClient } from '/client/realtime.js';

const params = new URLSearchParams(location.search);
const NAME = /^[A-Za-z0-9_.@-]{1,32}$/;
const ID_OF_ANOTHER_TYPE = /^(?:0|-?[1-9][0-9]*|[0-9a-f]{24})$/; // a number's or an ObjectId's text, not a name
const validName = (name) => NAME.test(name) && !ID_OF_ANOTHER_TYPE.test(name);
const MAX_POSTS = 50;
const SHOWN_COMMENTS = 20;
const $ = (selector, root = document) => root.querySelector(selector);

const user = pickUser();
const posts = new Map(); // post id -> model (shown or held)
const held = []; // new posts waiting behind the "N new posts" notice, oldest first
const list = $('[data-testid=posts]');
const notice = $('[data-testid=new-posts]');
const template = $('#post-template');
let token = null; // {token, expires}
let client = null;

function pickUser() {
  const asked = params.get('user');
  if (asked && validName(asked)) {
    sessionStorage.setItem('realtime-demo-user', asked);
    return asked;
  }
  const kept = sessionStorage.getItem('realtime-demo-user');
  if (kept && validName(kept)) return kept;
  const made = `guest-${Math.random().toString(16).slice(2, 6)}`;
  sessionStorage.setItem('realtime-demo-user', made);
  return made;
}

// -- the demo API --------------------------------------------------------------------------------------------

async function getToken() {
  if (token && token.expires - Date.now() / 1000 > 60) return token.token;
  const res = await fetch(`/demo/api/token?user=${encodeURIComponent(user)}`, { cache: 'no-store' });
  if (!res.ok) throw new Error(`no token (HTTP ${res.status})`);
  token = await res.json();
  return token.token;
}

async function api(path, body, signal) {
  let res;
  try {
    res = await fetch(path, {
      method: body === undefined ? 'GET' : 'POST',
      headers: { Authorization: `Bearer ${await getToken()}`, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (err) {
    err.retryable = true; // the network: try again
    throw err;
  }
  const reply = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(reply?.error?.message ?? `HTTP ${res.status}`);
    err.retryable = res.status >= 500 || res.status === 429;
    if (res.status === 401) token = null;
    throw err;
  }
  return reply;
}

// -- models ----------------------------------------------------------------------------------------------------

function model(data, position) {
  return {
    id: String(data.id),
    authorId: String(data.authorId ?? '?'),
    text: typeof data.text === 'string' ? data.text : '',
    hashtags: Array.isArray(data.hashtags) ? data.hashtags.map(String) : [],
    createdAt: data.createdAt ?? null,
    likes: Number.isFinite(data.likes) ? data.likes : 0,
    liked: Boolean(data.liked),
    pending: null, // the like state the user asked for, until confirmed
    comments: new Map((data.comments ?? []).map((c) => [String(c.id), comment(c)])),
    position, // the event id the model's state was read at: its room is replayed from there
    el: null,
    subscribed: false,
  };
}

function comment(c, pending = false) {
  return { id: String(c.id), userId: String(c.userId ?? '?'), text: typeof c.text === 'string' ? c.text : '', pending };
}

const shownLiked = (p) => p.pending ?? p.liked;
const shownLikes = (p) => Math.max(0, p.likes + (p.pending !== null && p.pending !== p.liked ? (p.pending ? 1 : -1) : 0));

// -- rendering (text only) -------------------------------------------------------------------------------------

function when(value, ts) {
  let date = null;
  if (typeof value === 'number') date = new Date(value < 1e12 ? value * 1000 : value);
  else if (typeof value === 'string') date = new Date(value);
  else if (typeof ts === 'number') date = new Date(ts);
  return date && !Number.isNaN(date.getTime()) ? date : null;
}

function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function render(p, ts) {
  const el = template.content.firstElementChild.cloneNode(true);
  el.dataset.postId = p.id;
  p.el = el;
  const avatar = $('.avatar', el);
  avatar.textContent = p.authorId.slice(0, 1).toUpperCase();
  avatar.style.background = `hsl(${hue(p.authorId)} 55% 50%)`;
  $('.author', el).textContent = p.authorId;
  const date = when(p.createdAt, ts);
  if (date) {
    $('.when', el).textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    $('.when', el).dateTime = date.toISOString();
  }
  $('.like', el).addEventListener('click', () => toggleLike(p));
  const form = $('.comment-form', el);
  const input = $('.comment-input', el);
  input.addEventListener('input', () => { if (input.value.trim()) client?.typing(`post:${p.id}`); });
  form.addEventListener('submit', (e) => { e.preventDefault(); sendComment(p, input); });
  renderText(p);
  renderLike(p);
  renderComments(p);
  return el;
}

function renderText(p) {
  if (!p.el) return;
  $('.text', p.el).textContent = p.text;
  $('.tags', p.el).textContent = p.hashtags.map((t) => `#${t}`).join(' ');
}

function renderLike(p, failed = false) {
  if (!p.el) return;
  const button = $('.like', p.el);
  button.setAttribute('aria-pressed', String(shownLiked(p)));
  button.classList.toggle('pending', p.pending !== null);
  button.title = shownLiked(p) ? 'Unlike' : 'Like';
  $('.likes', p.el).textContent = String(shownLikes(p));
  if (failed) {
    button.classList.remove('failed');
    void button.offsetWidth; // restart the animation
    button.classList.add('failed');
  }
}

function renderComments(p) {
  if (!p.el) return;
  const ul = $('.comments', p.el);
  const all = [...p.comments.values()];
  ul.replaceChildren(...all.slice(-SHOWN_COMMENTS).map((c) => {
    const li = document.createElement('li');
    li.dataset.commentId = c.id;
    li.classList.toggle('pending', c.pending);
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = c.userId;
    li.append(who, document.createTextNode(c.text));
    return li;
  }));
  $('.comment-count', p.el).textContent = all.length === 1 ? '1 comment' : `${all.length} comments`;
}

function renderTyping(p, users) {
  if (!p.el) return;
  const others = users.filter((u) => u !== user);
  let text = '';
  if (others.length === 1) text = `${others[0]} is typing…`;
  else if (others.length === 2) text = `${others[0]} and ${others[1]} are typing…`;
  else if (others.length > 2) text = `${others.length} people are typing…`;
  $('.typing', p.el).textContent = text;
}

function renderNotice() {
  notice.hidden = held.length === 0;
  notice.textContent = held.length === 1 ? '1 new post' : `${held.length} new posts`;
}

function renderEmpty() {
  $('[data-testid=empty]').hidden = posts.size > 0;
}

function renderOnline(users) {
  const ul = $('[data-testid=online]');
  ul.replaceChildren(...users.map((u) => {
    const li = document.createElement('li');
    li.textContent = u === user ? `${u} (you)` : u;
    li.classList.toggle('me', u === user);
    return li;
  }));
  $('[data-testid=online-count]').textContent = String(users.length);
}

const STATE_TEXT = { idle: 'starting', connecting: 'connecting…', connected: 'connected', reconnecting: 'reconnecting…', polling: 'polling', closed: 'offline' };

function renderState(state) {
  if (state === 'polling') { // presence comes over the WebSocket only
    const hint = document.createElement('li');
    hint.className = 'hint';
    hint.textContent = 'shown when the WebSocket is back';
    $('[data-testid=online]').replaceChildren(hint);
    $('[data-testid=online-count]').textContent = '';
  }
  const box = $('[data-testid=connection]');
  box.dataset.state = state;
  $('[data-testid=state]').textContent = STATE_TEXT[state] ?? state;
  box.title = state === 'polling' ? 'WebSockets do not get through: long-polling (and trying the WebSocket again now and then)' : '';
}

// -- the feed ------------------------------------------------------------------------------------------------

const visible = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    const p = posts.get(entry.target.dataset.postId);
    if (p && !p.subscribed && client) {
      p.subscribed = true; // comments, likes and typing of the posts the user has seen, from their snapshot on
      client.subscribe(`post:${p.id}`, { since: p.position ?? undefined });
    }
  }
});

function show(p, { top, ts, fresh }) {
  const el = render(p, ts);
  if (fresh) el.classList.add('fresh');
  if (top) list.prepend(el);
  else list.append(el);
  visible.observe(el);
}

function drop(p) {
  posts.delete(p.id);
  if (p.el) {
    visible.unobserve(p.el);
    p.el.remove();
  }
  if (p.subscribed) client?.unsubscribe(`post:${p.id}`);
}

function trim() {
  const shown = [...list.children];
  for (const el of shown.slice(MAX_POSTS)) {
    const p = posts.get(el.dataset.postId);
    if (p) drop(p);
  }
}

function atTop() {
  return window.scrollY < 80;
}

function onPostCreated(e) {
  const data = e.detail.data ?? {};
  if (data.id == null || posts.has(String(data.id))) return;
  const p = model(data, e.detail.id);
  p.createdAt ??= e.detail.ts;
  posts.set(p.id, p);
  if (held.length || !atTop()) { // the user is reading: do not move the page under them
    held.push(p);
    renderNotice();
  } else {
    show(p, { top: true, ts: e.detail.ts, fresh: true });
    trim();
  }
  renderEmpty();
}

function showHeld() {
  for (const p of held.splice(0)) show(p, { top: true, fresh: true });
  trim();
  renderNotice();
  window.scrollTo({ top: 0, behavior: 'smooth' });
}

function onEvent(e) {
  const { type, data } = e.detail;
  if (!data || typeof data !== 'object') return;
  const p = posts.get(String(type.startsWith('post:') && type !== 'post:liked' && type !== 'post:unliked' ? data.id : data.postId));
  switch (type) {
    case 'post:liked':
    case 'post:unliked':
      if (!p) return;
      if (Number.isFinite(data.likes)) p.likes = data.likes;
      if (data.userId === user) p.liked = type === 'post:liked';
      renderLike(p);
      break;
    case 'comment:added':
    case 'comment:updated':
      if (!p) return;
      p.comments.set(String(data.id), comment(data));
      renderComments(p);
      break;
    case 'comment:deleted':
      if (p && p.comments.delete(String(data.id))) renderComments(p);
      break;
    case 'post:updated':
      if (!p) return;
      if (typeof data.text === 'string') p.text = data.text;
      if (Array.isArray(data.hashtags)) p.hashtags = data.hashtags.map(String);
      renderText(p);
      break;
    case 'post:deleted':
      if (p) {
        const i = held.indexOf(p);
        if (i >= 0) held.splice(i, 1);
        drop(p);
        renderNotice();
        renderEmpty();
      }
      break;
    default:
      break;
  }
}

function merge(snapshot) { // after a reset: the server's state of what we show, and what we did not have
  for (const data of snapshot.posts) {
    const fresh = model(data, snapshot.position);
    const p = posts.get(fresh.id);
    if (!p) {
      posts.set(fresh.id, fresh);
      show(fresh, { top: false });
      continue;
    }
    p.likes = fresh.likes;
    p.liked = fresh.liked;
    for (const [id, c] of fresh.comments) p.comments.set(id, c);
    renderLike(p);
    renderComments(p);
  }
  trim();
  renderEmpty();
}

let refetching = null;
function refetch() {
  clearTimeout(refetching);
  refetching = setTimeout(async () => {
    try {
      merge(await api('/demo/api/feed'));
    } catch (err) {
      console.warn('realtime demo: refetch failed', err);
    }
  }, 300);
}

// -- writes ---------------------------------------------------------------------------------------------------

function toggleLike(p) {
  const liked = !shownLiked(p);
  client.likeOptimistically({
    postId: p.id,
    liked,
    apply: () => { p.pending = liked; renderLike(p); },
    rollback: (err) => {
      p.pending = null;
      renderLike(p, true);
      console.warn('realtime demo: like failed', err);
    },
    send: (attempt, signal) => api('/demo/api/like', { postId: p.id, liked }, signal),
    confirm: ({ via, response }) => {
      if (via === 'send' && response) { // no event in time (or none to come): take the API's word
        p.liked = response.liked;
        if (Number.isFinite(response.likes)) p.likes = response.likes;
      }
      p.pending = null;
      renderLike(p);
    },
    waitForEvent: 3000,
  }).catch(() => {});
}

async function sendComment(p, input) {
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  const temp = `pending-${Math.random().toString(16).slice(2)}`;
  p.comments.set(temp, comment({ id: temp, userId: user, text }, true));
  renderComments(p);
  try {
    const made = await api('/demo/api/comment', { postId: p.id, text });
    p.comments.delete(temp);
    if (!p.comments.has(made.id)) p.comments.set(made.id, comment(made, true)); // until its event arrives
  } catch (err) {
    p.comments.delete(temp);
    if (!input.value) input.value = text;
    console.warn('realtime demo: comment failed', err);
  }
  renderComments(p);
}

// -- start ------------------------------------------------------------------------------------------------------

function setupName() {
  const form = $('[data-testid=whoami]');
  const input = $('#name', form);
  input.value = user;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = input.value.trim();
    if (!validName(name)) {
      input.setCustomValidity('1 to 32 letters, digits or _ . @ -, not only digits');
      input.reportValidity();
      return;
    }
    const next = new URLSearchParams(location.search);
    next.set('user', name);
    location.search = next.toString();
  });
  input.addEventListener('input', () => input.setCustomValidity(''));
}

async function start() {
  setupName();
  renderState('connecting');
  notice.addEventListener('click', showHeld);
  let snapshot = { posts: [], position: null };
  for (let attempt = 0; ; attempt++) {
    try {
      snapshot = await api('/demo/api/feed');
      break;
    } catch (err) {
      renderState('reconnecting');
      await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** attempt)));
    }
  }
  for (const data of snapshot.posts) {
    const p = model(data, snapshot.position);
    posts.set(p.id, p);
    show(p, { top: false });
  }
  renderEmpty();

  const transport = ['auto', 'websocket', 'polling'].includes(params.get('transport')) ? params.get('transport') : 'auto';
  client = new RealtimeClient({
    token: getToken,
    rooms: ['public'],
    since: snapshot.position ?? undefined,
    transport,
    presenceRooms: ['public'],
    wsRetry: Number(params.get('wsRetry')) || 15000,
  });
  client.addEventListener('statechange', (e) => renderState(e.detail.state));
  client.addEventListener('post:created', onPostCreated);
  client.addEventListener('event', onEvent);
  client.addEventListener('reset', refetch);
  client.addEventListener('presence', (e) => { if (e.detail.room === 'public') renderOnline(e.detail.users); });
  client.addEventListener('typing', (e) => {
    const p = posts.get(e.detail.room.slice('post:'.length));
    if (p) renderTyping(p, e.detail.users);
  });
  client.addEventListener('error', (e) => console.warn('realtime:', e.detail.code, e.detail.message));
  client.connect();
  // posts already on screen: the observer fires for them now that there is a client
  for (const p of posts.values()) if (p.el) { visible.unobserve(p.el); visible.observe(p.el); }
}

start();
