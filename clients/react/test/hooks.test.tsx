// The hooks against realtime.js itself, with a fake WebSocket whose server the test plays.
import { StrictMode, useState, type ReactNode } from 'react';
import { renderToString } from 'react-dom/server';
import { act, cleanup, fireEvent, render, renderHook, screen, waitFor } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import {
  RealtimeProvider,
  useConnection,
  useEvent,
  useLikeButton,
  useNewPosts,
  useOptimisticUpdate,
  usePresence,
  useRealtime,
  useRoom,
  useTyping,
  type RealtimeProviderProps,
} from '../src/index.js';
import { ev, FakeSocket, jwt } from './fake.js';

const ME = jwt({ sub: 'me', exp: 9999999999 });

function provider(props: Partial<RealtimeProviderProps> = {}) {
  return function Wrapper({ children }: { children?: ReactNode }) {
    return (
      <RealtimeProvider url="http://rt.test" token={ME}
        options={{ WebSocket: FakeSocket, backoffBase: 5, backoffCap: 20, heartbeat: 0 }} {...props}>
        {children}
      </RealtimeProvider>
    );
  };
}

/** The first socket, once its first frames are out, answered: the client is connected. */
async function connected(n = 0): Promise<FakeSocket> {
  await waitFor(() => expect(FakeSocket.sockets[n]?.frames('ping').length).toBeGreaterThan(0));
  const ws = FakeSocket.sockets[n]!;
  act(() => ws.ready());
  return ws;
}

const tick = () => act(() => new Promise((r) => setTimeout(r, 5)));

beforeEach(() => {
  FakeSocket.sockets = [];
});
afterEach(() => {
  cleanup();
});

describe('RealtimeProvider', () => {
  it('renders on the server without a client or a socket', () => {
    function Badge() {
      const { state, isConnected, isReconnecting } = useRealtime();
      const { lastEventAge } = useConnection();
      return <p>{`${state} ${isConnected} ${isReconnecting} ${lastEventAge}`}</p>;
    }
    const html = renderToString(
      <RealtimeProvider url="http://rt.test" rooms={['public']} options={{ WebSocket: FakeSocket }}>
        <Badge />
      </RealtimeProvider>,
    );
    expect(html).toContain('idle false false null');
    expect(FakeSocket.sockets).toHaveLength(0);
  });

  it('connects once under strict mode, and closes when unmounted', async () => {
    const { unmount } = render(
      <StrictMode>
        <RealtimeProvider url="http://rt.test" token={ME} rooms={['public']} options={{ WebSocket: FakeSocket, heartbeat: 0 }}>
          <p>app</p>
        </RealtimeProvider>
      </StrictMode>,
    );
    const ws = await connected();
    await tick();
    expect(FakeSocket.sockets).toHaveLength(1);
    expect(ws.frames('subscribe').map((f) => f.rooms)).toEqual([['public']]);
    expect(ws.frames('unsubscribe')).toHaveLength(0);
    unmount();
    await waitFor(() => expect(ws.closedWith?.code).toBe(1000));
    expect(FakeSocket.sockets).toHaveLength(1);
  });

  it('useRealtime: isConnected and isReconnecting, as the original design named them', async () => {
    const { result } = renderHook(() => useRealtime(), { wrapper: provider({ rooms: ['public'] }) });
    expect(result.current.isConnected).toBe(false);
    const ws = await connected();
    expect(result.current).toMatchObject({ state: 'connected', isConnected: true, isReconnecting: false, user: 'me' });
    act(() => ws.serverClose(1006));
    expect(result.current).toMatchObject({ state: 'reconnecting', isConnected: false, isReconnecting: true });
    await connected(1);
    expect(result.current.isConnected).toBe(true);
  });

  it('a token function is read through its latest version', async () => {
    const calls: string[] = [];
    const { rerender } = renderHook(() => useRealtime(), {
      wrapper: ({ children }) => {
        const [n] = useState(0);
        return provider({ token: () => { calls.push(`v${n}`); return ME; } })({ children });
      },
    });
    await connected();
    rerender();
    expect(FakeSocket.sockets).toHaveLength(1); // a new function is not a new client
    expect(calls).toEqual(['v0']);
  });
});

describe('useRoom', () => {
  it('holds rooms while mounted, counted across components, with since', async () => {
    function Holder({ rooms, since }: { rooms: string[]; since?: string }) {
      useRoom(rooms, { since });
      return null;
    }
    function App({ a, b }: { a: boolean; b: boolean }) {
      return (
        <>
          {a && <Holder rooms={['post:p1']} since="3-0" />}
          {b && <Holder rooms={['post:p1', 'post:p2']} />}
        </>
      );
    }
    const Wrapper = provider({ rooms: ['public'], since: '2-0' });
    const { rerender } = render(<Wrapper><App a b={false} /></Wrapper>);
    const ws = await connected();
    rerender(<Wrapper><App a b /></Wrapper>);
    await tick();
    const subs = ws.frames('subscribe').map((f) => [f.rooms, f.since]);
    expect(subs).toEqual([[['post:p1'], '3-0'], [['public'], '2-0'], [['post:p2'], '2-0']]);
    rerender(<Wrapper><App a={false} b /></Wrapper>);
    await tick();
    expect(ws.frames('unsubscribe')).toHaveLength(0); // post:p1 is still held
    rerender(<Wrapper><App a={false} b={false} /></Wrapper>);
    await waitFor(() => expect(ws.frames('unsubscribe').map((f) => f.rooms)).toEqual([['post:p1', 'post:p2']]));
  });
});

describe('useEvent', () => {
  it('calls the latest handler with each event of its type', async () => {
    const seen: string[] = [];
    function Listener({ tag }: { tag: string }) {
      useEvent('comment:added', (e) => seen.push(`${tag}:${e.id}`));
      return null;
    }
    const Wrapper = provider({ rooms: ['post:p1'] });
    const { rerender } = render(<Wrapper><Listener tag="a" /></Wrapper>);
    const ws = await connected();
    act(() => ws.message(ev('5-0', 'comment:added', 'post:p1', { id: 'c1' })));
    act(() => ws.message(ev('6-0', 'post:liked', 'post:p1', { postId: 'p1' })));
    rerender(<Wrapper><Listener tag="b" /></Wrapper>);
    act(() => ws.message(ev('7-0', 'comment:added', 'post:p1', { id: 'c2' })));
    expect(seen).toEqual(['a:5-0', 'b:7-0']);
  });
});

describe('useLikeButton', () => {
  function Like({ send, count = 4, liked = false, wait }: {
    send: (liked: boolean, signal: AbortSignal) => Promise<unknown>; count?: number; liked?: boolean; wait?: number;
  }) {
    const like = useLikeButton('p1', { initialCount: count, initialLiked: liked, send, retries: 1, retryBase: 5,
      waitForEvent: wait });
    return (
      <button type="button" onClick={like.toggle} data-pending={like.pending} data-error={like.error?.message ?? ''}>
        {`${like.liked ? 'liked' : 'like'} ${like.count}`}
      </button>
    );
  }

  it('shows a like at once and settles on its event; others\' likes move the count meanwhile', async () => {
    const sent: boolean[] = [];
    let answer!: (v: unknown) => void;
    const send = (liked: boolean) => { sent.push(liked); return new Promise((r) => { answer = r; }); };
    render(<Like send={send} />, { wrapper: provider() });
    const ws = await connected();
    expect(ws.frames('subscribe').map((f) => f.rooms)).toEqual([['post:p1']]);
    const button = screen.getByRole('button');
    fireEvent.click(button);
    expect(button.textContent).toBe('liked 5');
    expect(button.dataset.pending).toBe('true');
    expect(sent).toEqual([true]);
    act(() => ws.message(ev('8-0', 'post:liked', 'post:p1', { postId: 'p1', userId: 'eve', likes: 5 })));
    expect(button.textContent).toBe('liked 6'); // eve's like, and mine still on its way
    act(() => ws.message(ev('9-0', 'post:liked', 'post:p1', { postId: 'p1', userId: 'me', likes: 6 })));
    expect(button.textContent).toBe('liked 6');
    expect(button.dataset.pending).toBe('false');
    act(() => answer({ likes: 6 }));
    await tick();
    expect(button.textContent).toBe('liked 6');
    fireEvent.click(button); // and an unlike
    expect(button.textContent).toBe('like 5');
    expect(sent).toEqual([true, false]);
  });

  it('rolls back when the send fails after its retries', async () => {
    let calls = 0;
    const send = async () => { calls++; throw new Error('503'); };
    render(<Like send={send} />, { wrapper: provider() });
    await connected();
    const button = screen.getByRole('button');
    fireEvent.click(button);
    expect(button.textContent).toBe('liked 5');
    await waitFor(() => expect(button.dataset.error).toBe('503'));
    expect(button.textContent).toBe('like 4');
    expect(button.dataset.pending).toBe('false');
    expect(calls).toBe(2); // the first try and one retry
  });

  it('without its event, the answer of send settles it', async () => {
    render(<Like send={async () => ({ likes: 9 })} wait={20} />, { wrapper: provider() });
    await connected();
    const button = screen.getByRole('button');
    fireEvent.click(button);
    expect(button.textContent).toBe('liked 5');
    await waitFor(() => expect(button.dataset.pending).toBe('false'));
    expect(button.textContent).toBe('liked 9');
  });
});

describe('useOptimisticUpdate', () => {
  it('shows the optimistic value until confirmed, and rolls back on failure', async () => {
    let fail = false;
    const { result } = renderHook(() => useOptimisticUpdate('draft'), { wrapper: provider() });
    await connected();
    let done!: Promise<unknown>;
    act(() => { done = result.current.update('saved', async () => 'ok'); });
    expect(result.current.value).toBe('saved');
    await act(async () => { await done; });
    expect(result.current).toMatchObject({ value: 'draft', pending: false, error: null });
    fail = true;
    act(() => {
      done = result.current.update('lost', async () => { if (fail) throw Object.assign(new Error('no'), { retryable: false }); });
      done.catch(() => {});
    });
    expect(result.current.value).toBe('lost');
    await waitFor(() => expect(result.current.error?.message).toBe('no'));
    expect(result.current.value).toBe('draft');
  });
});

describe('useNewPosts', () => {
  it('counts new posts until flushed; known, deleted and edited ones are handled', async () => {
    const known = (id: string, post: Record<string, unknown>) => id === 'old' || post.authorId === 'me';
    const { result } = renderHook(() => useNewPosts('public', { known }), { wrapper: provider() });
    const ws = await connected();
    expect(ws.frames('subscribe').map((f) => f.rooms)).toEqual([['public']]);
    act(() => {
      ws.message(ev('5-0', 'post:created', 'public', { id: 'old', text: 'replayed' }));
      ws.message(ev('6-0', 'post:created', 'public', { id: 'a', text: 'first' }));
      ws.message(ev('7-0', 'post:created', 'public', { id: 'b', text: 'second' }));
      ws.message(ev('8-0', 'post:created', 'public', { id: 'c', text: 'third' }));
      ws.message(ev('9-0', 'post:deleted', 'public', { id: 'b' }));
      ws.message(ev('10-0', 'post:updated', 'public', { id: 'a', text: 'edited' }));
      ws.message(ev('11-0', 'post:created', 'post:x', { id: 'elsewhere' }));
      ws.message(ev('12-0', 'post:created', 'public', { id: 'mine', authorId: 'me' }));
    });
    expect(result.current.count).toBe(2);
    let taken: unknown[] = [];
    act(() => { taken = result.current.flush(); });
    expect(taken).toEqual([
      { post: { id: 'c', text: 'third' }, since: '8-0' },
      { post: { id: 'a', text: 'edited' }, since: '6-0' },
    ]);
    expect(result.current.count).toBe(0);
  });
});

describe('useConnection', () => {
  it('state, transport, reconnects, the age of the last event and the round trip', async () => {
    const { result } = renderHook(() => useConnection({ tick: 0, rttEvery: 60000 }),
      { wrapper: provider({ rooms: ['public'] }) });
    expect(result.current).toMatchObject({ state: 'connecting', reconnects: 0, lastEventAge: null, rtt: null });
    const ws = await connected();
    const ping = await waitFor(() => {
      const frame = ws.frames('ping').find((f) => String(f.ref).startsWith('rtt'));
      expect(frame).toBeDefined();
      return frame!;
    });
    act(() => ws.message({ op: 'pong', ref: ping.ref }));
    expect(result.current.rtt).toBeTypeOf('number');
    act(() => ws.message(ev('5-0', 'post:created', 'public', { id: 'p' })));
    expect(result.current).toMatchObject({ state: 'connected', transport: 'websocket', lastId: '5-0' });
    expect(result.current.lastEventAge).toBeTypeOf('number');
    act(() => ws.serverClose(1006));
    expect(result.current).toMatchObject({ state: 'reconnecting', reconnects: 1 });
    await connected(1);
    expect(result.current).toMatchObject({ state: 'connected', reconnects: 1 });
  });
});

describe('useRealtime, when the server stops answering', () => {
  it('is no longer connected once a ping goes unanswered, and connected again on a new connection', async () => {
    // the badge said "live" for a minute while the server was stopped: the socket stays open, silent
    const { result } = renderHook(() => useRealtime(), { wrapper: provider({
      rooms: ['public'],
      options: { WebSocket: FakeSocket, backoffBase: 5, backoffCap: 20, heartbeat: 40, heartbeatTimeout: 60 },
    }) });
    const ws = await connected();
    expect(result.current.isConnected).toBe(true);
    await waitFor(() => expect(ws.frames('ping').some((f) => String(f.ref).startsWith('hb'))).toBe(true));
    await waitFor(() => expect(result.current.isReconnecting).toBe(true), { timeout: 2000 });
    expect(ws.closedWith?.code).toBe(4000);
    await connected(1);
    expect(result.current.isConnected).toBe(true);
  });
});

describe('usePresence and useTyping', () => {
  it('follow the room and leave this user out of the typists', async () => {
    const { result } = renderHook(() => ({ online: usePresence('post:p1'), typing: useTyping('post:p1') }),
      { wrapper: provider() });
    const ws = await connected();
    const asked = ws.frames('presence')[0]!;
    act(() => ws.message({ op: 'presence', ref: asked.ref, room: 'post:p1', users: ['me', 'eve'] }));
    expect(result.current.online).toEqual(['eve', 'me']);
    const before = result.current.online;
    act(() => ws.message({ op: 'presence', type: 'user:typing', room: 'post:p1', data: { userId: 'eve' } }));
    act(() => ws.message({ op: 'presence', type: 'user:typing', room: 'post:p1', data: { userId: 'me' } }));
    expect(result.current.typing.users).toEqual(['eve']);
    expect(result.current.online).toBe(before); // unchanged: the same array
    act(() => ws.message({ op: 'presence', type: 'user:offline', room: 'post:p1', data: { userId: 'eve' } }));
    expect(result.current.online).toEqual(['me']);
    expect(result.current.typing.users).toEqual([]);
    act(() => { result.current.typing.typing(); });
    expect(ws.frames('typing')).toEqual([{ op: 'typing', room: 'post:p1' }]);
  });
});
