'use client';
// realtime-react: React bindings for realtime.js (docs/react.md). No protocol code of its own: realtime.js does
// the connecting, resuming, fallback, optimistic updates, presence and typing.

export { RealtimeProvider, useRealtime, useRealtimeContext } from './provider.js';
export type { ProviderOptions, Realtime, RealtimeContextValue, RealtimeProviderProps } from './provider.js';
export { useConnection, useEvent, useNewPosts, usePresence, useRoom, useTyping } from './hooks.js';
export type { Connection, NewPost, NewPosts, NewPostsOptions, Typing } from './hooks.js';
export { useLikeButton, useOptimisticUpdate } from './optimistic.js';
export type { LikeButton, LikeButtonOptions, Optimistic, OptimisticOptions } from './optimistic.js';
export type { ConnectionSnapshot } from './store.js';
export { RealtimeClient, compareIds, validRoom } from './realtime.js';
export type { ClientOptions, Confirmation, RealtimeEvent, State, TokenSource, Transport } from './realtime.js';
