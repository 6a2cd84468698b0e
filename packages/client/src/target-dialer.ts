/**
 * TCP connections to route targets, with a few spares. A spare is a target connection opened
 * before a user needs it: the next stream for that route takes it instead of waiting for a TCP
 * connect, which otherwise sits on every new user connection's critical path (bench S4: the
 * connect starts only once the stream header has crossed the tunnel).
 *
 * Policy, per route (invariants the tests hold us to):
 * - a spare is opened only because a stream for the route just arrived: an idle route holds
 *   none, and the agent never connects to a target nobody is using;
 * - at most `spareConnections` spares per route, ready or still connecting; two routes to one
 *   address never share one (one may speak TLS to it, the other not);
 * - a spare nobody took within `spareIdleMs` of being opened is closed and not replaced, so a
 *   route stops holding one `spareIdleMs` after its last stream;
 * - a spare the target closed, reset or that failed is dropped at once, never handed out, and
 *   not replaced until the next stream;
 * - bytes a target sends on a spare before it is used (a greeting) are kept for the user;
 * - close() closes every spare; no new one is opened afterwards.
 *
 * What a target sees: one extra idle TCP connection per busy route. A kube-apiserver (Go
 * net/http) takes it for a client that has not started its TLS handshake yet; it would close it
 * after its ReadHeaderTimeout (32 s in kube-apiserver), far above spareIdleMs. A spare closed
 * unused ends a handshake that never began: Go counts it in
 * `apiserver_tls_handshake_errors_total` and logs it at verbosity 5 ("TLS handshake error …
 * EOF"), once per burst of use. `spareConnections: 0` turns spares off.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Clock } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { RouteEntry } from './route-table.js';

export interface TargetDialerOptions {
  /** Spares kept per route while it is in use; 0 disables them. */
  spareConnections: number;
  /** How long a spare may wait for a stream before it is closed. */
  spareIdleMs: number;
  /** How long a TCP connect to a target may take. */
  dialTimeoutMs: number;
  clock: Clock;
  logger: Logger;
  /** Every connect to a target, spares and probes included: how long it took, or its errno. */
  onConnect?: (target: string, ms: number, errno: string | undefined) => void;
}

/** A connected target socket; `spare` when it was opened ahead of the stream that got it. */
export interface TargetConnection {
  socket: net.Socket;
  spare: boolean;
}

interface Spare {
  /** The route label (and the ALPN offer): the key of the list holding this spare. */
  key: string;
  socket: net.Socket;
  /** Connected: it may be handed out. A spare still connecting is not waited for. */
  ready: boolean;
  /** Closes the spare when nobody took it within spareIdleMs. */
  timer: unknown;
  /** Detaches the idle listeners before the socket is handed out or dropped. */
  release: () => void;
}

export class TargetDialer {
  private readonly o: TargetDialerOptions;
  /** Spares by target, oldest first; a target with none has no entry. */
  private readonly spares = new Map<string, Spare[]>();
  private closed = false;

  constructor(options: TargetDialerOptions) {
    this.o = options;
  }

  /** Spares connected and ready to hand out, over all targets. */
  get spareCount(): number {
    let n = 0;
    for (const list of this.spares.values()) for (const s of list) if (s.ready) n++;
    return n;
  }

  /**
   * Spares still connecting, over all targets. With none, and no dial() in this turn, the dialer
   * opens nothing more until the next dial(): what tests (and metrics) can hold it to.
   */
  get connectingSpareCount(): number {
    let n = 0;
    for (const list of this.spares.values()) for (const s of list) if (!s.ready) n++;
    return n;
  }

  /**
   * A connected socket to the route's target: a ready spare when there is one, else a new
   * connection (a spare still connecting is left alone: it has no deadline of dialTimeoutMs,
   * only spareIdleMs). Either way the route counts as in use, so a spare is (re)opened behind
   * it. Rejects with the connect error (`code` ETIMEDOUT after dialTimeoutMs). `alpn`: the
   * protocols to offer an agent-tls target; spares are kept per offer.
   */
  async dial(entry: RouteEntry, alpn?: readonly string[]): Promise<TargetConnection> {
    const target: DialTarget = { entry, alpn, key: spareKey(entry, alpn) };
    const spare = this.takeSpare(target.key);
    // After this turn's I/O: the caller's first writes to the target (a ClientHello) go
    // before the cost of opening another connection.
    if (!this.closed && this.o.spareConnections > 0) setImmediate(() => this.topUp(target));
    if (spare) return { socket: spare, spare: true };
    return { socket: await this.connect(target), spare: false };
  }

  /**
   * A data-path probe: a new connection to the route's target (TLS done for an https target),
   * closed at once; resolves with how long it took. Never a spare: the probe is of the path now.
   */
  async probe(entry: RouteEntry): Promise<number> {
    const startedAt = performance.now();
    const socket = await this.connect({ entry, alpn: undefined, key: entry.label });
    const ms = performance.now() - startedAt;
    socket.destroy();
    return ms;
  }

  /** Closes every spare; later dials still work but open no spares. Idempotent. */
  close(): void {
    this.closed = true;
    for (const list of this.spares.values()) for (const spare of list) this.drop(spare);
    this.spares.clear();
  }

  /** The oldest ready spare, out of the pool and with its idle listeners detached. */
  private takeSpare(key: string): net.Socket | undefined {
    const spare = this.spares.get(key)?.find((s) => s.ready);
    if (!spare) return undefined;
    this.remove(spare);
    this.o.clock.clearTimeout(spare.timer);
    spare.release();
    return spare.socket;
  }

  private topUp(target: DialTarget): void {
    if (this.closed || this.o.spareConnections <= 0) return;
    let list = this.spares.get(target.key);
    if (!list) this.spares.set(target.key, (list = []));
    while (list.length < this.o.spareConnections) list.push(this.openSpare(target));
  }

  private openSpare(target: DialTarget): Spare {
    const { entry } = target;
    const startedAt = performance.now();
    const socket = openSocket(target);
    const gone = (): void => {
      if (this.remove(spare)) this.drop(spare);
    };
    const onError = (err: NodeJS.ErrnoException): void => {
      this.o.logger.debug({ target: entry.target, errno: err.code }, 'spare target connection failed');
      if (!spare.ready)
        this.o.onConnect?.(entry.target, performance.now() - startedAt, err.code ?? 'EUNKNOWN');
      gone();
    };
    // A greeting (a server-speaks-first target) is put back and kept for the user. The socket
    // then stays paused, so a close after the greeting shows only once a stream reads it.
    const onData = (chunk: Buffer): void => {
      socket.pause();
      socket.unshift(chunk);
    };
    const onConnect = (): void => {
      spare.ready = true;
      this.o.onConnect?.(entry.target, performance.now() - startedAt, undefined);
      socket.on('data', onData);
    };
    const spare: Spare = {
      key: target.key,
      socket,
      ready: false,
      timer: this.o.clock.setTimeout(() => {
        if (!this.remove(spare)) return;
        this.o.logger.debug({ target: entry.target }, 'spare target connection unused, closed');
        this.drop(spare);
      }, this.o.spareIdleMs),
      release: () => {
        socket.off(readyEvent(entry), onConnect);
        socket.off('data', onData);
        socket.off('end', gone);
        socket.off('close', gone);
        socket.off('error', onError);
      },
    };
    socket.once(readyEvent(entry), onConnect);
    // A target that ends or resets an idle connection would end the user's at once: drop it.
    socket.on('end', gone);
    socket.on('close', gone);
    socket.on('error', onError);
    return spare;
  }

  /** Takes `spare` out of its list; false when it was no longer there. */
  private remove(spare: Spare): boolean {
    const list = this.spares.get(spare.key);
    const index = list?.indexOf(spare) ?? -1;
    if (!list || index < 0) return false;
    list.splice(index, 1);
    if (list.length === 0) this.spares.delete(spare.key);
    return true;
  }

  private drop(spare: Spare): void {
    this.o.clock.clearTimeout(spare.timer);
    spare.release();
    // A late error (an RST racing the destroy) concerns nobody.
    spare.socket.on('error', ignoreError);
    spare.socket.destroy();
  }

  /** A new connection, bounded by dialTimeoutMs (a real timer: connects are real I/O). */
  private connect(target: DialTarget): Promise<net.Socket> {
    const { entry } = target;
    const startedAt = performance.now();
    return new Promise<net.Socket>((resolve, reject) => {
      const socket = openSocket(target);
      const timer = setTimeout(() => {
        const err = new Error(`connect to ${entry.target} timed out`) as NodeJS.ErrnoException;
        err.code = 'ETIMEDOUT';
        socket.destroy(err);
      }, this.o.dialTimeoutMs);
      const onConnect = (): void => {
        clearTimeout(timer);
        socket.off('error', onError);
        resolve(socket);
      };
      const onError = (err: Error): void => {
        clearTimeout(timer);
        socket.off(readyEvent(entry), onConnect);
        reject(err);
      };
      socket.once(readyEvent(entry), onConnect);
      socket.once('error', onError);
    }).then(
      (socket) => {
        this.o.onConnect?.(entry.target, performance.now() - startedAt, undefined);
        return socket;
      },
      (err: NodeJS.ErrnoException) => {
        this.o.onConnect?.(entry.target, performance.now() - startedAt, err.code ?? 'EUNKNOWN');
        throw err;
      },
    );
  }
}

/**
 * Socket options for every target connection, set before the connect (Node applies them once
 * connected), so a spare carries them ready-made: no Nagle delay on small writes, and TCP
 * keepalive so a long-lived idle watch notices a dead peer.
 */
function openSocket({ entry, alpn }: DialTarget): net.Socket {
  const socket = entry.tls
    ? // An https or agent-tls target: TLS from the agent, verified as the route says (route-table.ts).
      tls.connect({
        host: entry.host,
        port: entry.port,
        ...(entry.tls.servername === undefined ? {} : { servername: entry.tls.servername }),
        ...(entry.tls.ca === undefined ? {} : { ca: entry.tls.ca }),
        rejectUnauthorized: entry.tls.rejectUnauthorized,
        // The http mode speaks HTTP/1.1; agent-tls offers what its user offered (agent-tls.ts).
        ...(entry.mode === 'agent-tls'
          ? alpn && alpn.length > 0
            ? { ALPNProtocols: [...alpn] }
            : {}
          : { ALPNProtocols: ['http/1.1'] }),
      })
    : net.connect({ host: entry.host, port: entry.port, allowHalfOpen: true });
  socket.setNoDelay(true);
  socket.setKeepAlive(true, 30_000);
  return socket;
}

/**
 * A target as one dial sees it. Spares are kept per route and ALPN offer (`key`), not per
 * address: two routes to one address may differ in how they connect (plain TCP for passthrough,
 * TLS for an https or agent-tls route, with their own CA and name), and a spare of one must never
 * be handed to the other.
 */
interface DialTarget {
  entry: RouteEntry;
  /** The ALPN protocols to offer an agent-tls target. */
  alpn: readonly string[] | undefined;
  key: string;
}

function spareKey(entry: RouteEntry, alpn: readonly string[] | undefined): string {
  return alpn === undefined || alpn.length === 0 ? entry.label : `${entry.label} alpn=${alpn.join(',')}`;
}

/** When a target socket is ready for bytes: connected, and for an https target, TLS done. */
function readyEvent(entry: RouteEntry): 'connect' | 'secureConnect' {
  return entry.tls ? 'secureConnect' : 'connect';
}

function ignoreError(): void {}
