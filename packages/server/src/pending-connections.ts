/**
 * Connections on the public port that have not yet said where they go (a ClientHello naming a
 * route) or who they are (an agent's accepted upgrade). Anyone on the internet can open them, so
 * they are bounded in time (one deadline covers the ClientHello, the TLS handshake, the request
 * headers and the token check), in number, and in number per source address
 * (docs/SECURITY.md). A connection leaves this set when it is settled or closes.
 */
import { isIPv6 } from 'node:net';
import type { Socket } from 'node:net';
import type { Clock } from '@cluster-tunnel/protocol';

/** What a pending connection is waiting for, for the log line when its deadline passes. */
export type PendingPhase =
  | 'client-hello'
  | 'tls-handshake'
  | 'request-headers'
  | 'agent-upgrade'
  // A route named whose cluster has no agent here yet (agentWaitMs).
  | 'agent-wait';

export interface PendingConnectionsOptions {
  /** From accept until settled. */
  deadlineMs: number;
  maxPending: number;
  /** 0: no per-address limit (behind a balancer that hides client addresses). */
  maxPendingPerAddress: number;
  /** Called when a deadline passes, before the socket is destroyed. */
  onTimeout: (socket: Socket, phase: PendingPhase) => void;
  /** The number of pending connections changed (a gauge). */
  onSize?: (size: number) => void;
  clock: Clock;
}

export interface PendingConnection {
  phase: PendingPhase;
  /** It has a route or an identity now: the deadline and the counts no longer apply. */
  settle(): void;
  /** The deadline passed (onTimeout ran and the socket was destroyed). */
  readonly timedOut: boolean;
  /** Milliseconds left before the deadline. */
  readonly remainingMs: number;
}

export type Refusal = 'maxPendingConnections' | 'maxPendingConnectionsPerAddress';

export class PendingConnections {
  private count = 0;
  private readonly perAddress = new Map<string, number>();

  constructor(private readonly o: PendingConnectionsOptions) {}

  get size(): number {
    return this.count;
  }

  /** Admits `socket`, or names the limit it is over (the caller refuses it). */
  admit(socket: Socket): PendingConnection | Refusal {
    const key = addressKey(socket.remoteAddress ?? '');
    const fromAddress = this.perAddress.get(key) ?? 0;
    if (this.count >= this.o.maxPending) return 'maxPendingConnections';
    if (this.o.maxPendingPerAddress > 0 && fromAddress >= this.o.maxPendingPerAddress) {
      return 'maxPendingConnectionsPerAddress';
    }
    this.count++;
    this.perAddress.set(key, fromAddress + 1);
    this.o.onSize?.(this.count);
    const { clock, deadlineMs } = this.o;
    const deadline = clock.now() + deadlineMs;
    let settled = false;
    let timedOut = false;
    const settle = (): void => {
      if (settled) return;
      settled = true;
      clock.clearTimeout(timer);
      socket.off('close', settle);
      this.count--;
      this.o.onSize?.(this.count);
      const left = (this.perAddress.get(key) ?? 1) - 1;
      if (left > 0) this.perAddress.set(key, left);
      else this.perAddress.delete(key);
    };
    const pending: PendingConnection = {
      phase: 'client-hello',
      settle,
      get timedOut() {
        return timedOut;
      },
      get remainingMs() {
        return Math.max(0, deadline - clock.now());
      },
    };
    const timer = clock.setTimeout(() => {
      if (settled) return;
      timedOut = true;
      this.o.onTimeout(socket, pending.phase);
      settle();
      socket.destroy();
    }, deadlineMs);
    socket.once('close', settle);
    return pending;
  }
}

/**
 * The unit a per-address limit counts: an IPv4 address (also when IPv4-mapped), or an IPv6
 * /64, since one host usually holds a whole /64.
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (!isIPv6(address)) return address;
  const [head = '', tail = ''] = address.toLowerCase().split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === '' ? [] : tail.split(':');
  const groups = address.includes('::')
    ? [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, ''))
    .join(':')}::/64`;
}
