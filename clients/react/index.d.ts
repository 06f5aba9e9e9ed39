// Types of realtide's React binding (index.js), for editors and TypeScript.

import type { ReactNode } from 'react';
import type { Frame, Presence, RealtimeClient, RealtimeError, Status } from 'realtide';

export interface AerostackProviderProps {
  /** ws(s)://host:port/api/realtime; or give `baseUrl`. */
  url?: string;
  /** http(s)://host:port of realtide (default: the page's origin). */
  baseUrl?: string;
  projectId?: string;
  /** A JWT; a new value is sent on the open connection. */
  token?: string;
  /** Called for a token before connecting, before it expires, and after it was refused. */
  getToken?: () => string | Promise<string>;
  /** A project API key. */
  apiKey?: string;
  /** The identity in open mode (no JWT secret on the server). */
  userId?: string;
  children?: ReactNode;
}

export function AerostackProvider(props: AerostackProviderProps): ReactNode;

export interface Aerostack {
  /** The same client on every render. */
  realtime: RealtimeClient;
  /** For code written against the published `@aerostack/react` (`sdk.realtime`). */
  sdk: { realtime: RealtimeClient };
}

export function useAerostack(): Aerostack;

export interface SubscriptionState {
  /** The latest event: `{ operation, data, old }` on a table, `{ event, data, userId }` on pub/sub. */
  data: Frame | null;
  error: RealtimeError | null;
  /** True until the server confirmed the subscription. */
  loading: boolean;
}

export function useSubscription(
  topic: string | null | undefined,
  options?: { event?: string; filter?: Record<string, unknown> },
): SubscriptionState;

export interface TableState {
  /** The table's rows that match the filter, kept live. */
  rows: Record<string, unknown>[];
  error: RealtimeError | null;
  /** True until the rows have arrived. */
  loading: boolean;
}

export function useTable(
  table: string | null | undefined,
  options?: { filter?: Record<string, unknown> },
): TableState;

export function usePresence(topic: string | null | undefined, state?: Record<string, unknown>): Presence;

export function useRealtimeStatus(): { status: Status; error: RealtimeError | null };
