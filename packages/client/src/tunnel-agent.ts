/**
 * The agent's connect loop: read the token, dial the server, register the routes, serve user
 * streams until the session ends, then reconnect, forever.
 *
 * - Refused credentials (HTTP 401/403) and operator errors (a route outside the token's cluster,
 *   an unsupported protocol version, an unusable token) are logged at error level and retried
 *   after `authRetryMs`: slow, so a misconfigured fleet never hammers the server.
 * - Every other failure backs off exponentially with full jitter; a session that stayed up
 *   `healthyResetMs` resets the delay.
 * - A server that sends GoAway (it is draining) keeps its streams until they finish while the
 *   agent dials a new session at once (the load balancer picks another replica).
 *
 * Events: 'registered' ({ serverId, hostnames }), 'disconnected' ({ serverId, err }).
 */
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { decodeJwt } from 'jose';
import { TunnelError, isValidClusterId } from '@cluster-tunnel/protocol';
import type { Clock, ErrorCode, Logger } from '@cluster-tunnel/protocol';
import { AgentSession } from './agent-session.js';
import { Backoff } from './backoff.js';
import type { ClientConfig } from './config.js';
import { dial, isCredentialRefusal } from './dialer.js';
import { HealthServer } from './health.js';
import { RouteTable } from './route-table.js';

/** The package version, sent in `register` and shown by --version. */
export const AGENT_VERSION: string = (
  createRequire(import.meta.url)('../package.json') as { version: string }
).version;

/** Codes after which retrying soon cannot help: an operator must change something. */
const OPERATOR_ERROR_CODES: ReadonlySet<ErrorCode> = new Set([
  'TUN_ERR_ROUTE_FORBIDDEN',
  'TUN_ERR_UNSUPPORTED_VERSION',
  'TUN_ERR_CONFIG',
]);

/** Timers that keep the process alive: an agent waiting to reconnect must not exit. */
const agentClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface TunnelAgentOptions {
  logger: Logger;
  clock?: Clock;
  /** Jitter source, uniform in [0, 1). */
  random?: () => number;
  /** How long the server may take to answer `register` (default 10 s). */
  registerTimeoutMs?: number;
  /** TCP, proxy, TLS and upgrade to the server (default 15 s). */
  dialTimeoutMs?: number;
  /** How long the server may take to send a stream's header (default 10 s). */
  streamHeaderTimeoutMs?: number;
  /**
   * TCP connect to a route target (default 5 s): below the server's wait for the stream reply
   * (its handshakeTimeoutMs, 10 s by default), so the server hears why rather than timing out.
   */
  targetDialTimeoutMs?: number;
}

export interface AgentRegisteredEvent {
  serverId: string;
  hostnames: readonly string[];
}

export interface AgentDisconnectedEvent {
  serverId: string;
  err: TunnelError | undefined;
}

type Phase = 'token' | 'dial' | 'register';

export class TunnelAgent extends EventEmitter {
  readonly config: Readonly<ClientConfig>;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly backoff: Backoff;
  private readonly timeouts: Required<Omit<TunnelAgentOptions, 'logger' | 'clock' | 'random'>>;
  private readonly sessions = new Set<AgentSession>();
  private health: HealthServer | undefined;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private closePromise: Promise<void> | undefined;
  private dialAbort: AbortController | undefined;
  private wake: (() => void) | undefined;
  /** How far the current attempt got: decides how its failure is logged and retried. */
  private phase: Phase = 'token';

  constructor(config: Readonly<ClientConfig>, options: TunnelAgentOptions) {
    super();
    this.config = config;
    this.log = options.logger;
    this.clock = options.clock ?? agentClock;
    this.backoff = new Backoff({
      initialMs: config.backoffInitialMs,
      maxMs: config.backoffMaxMs,
      healthyResetMs: config.healthyResetMs,
      now: () => this.clock.now(),
      ...(options.random === undefined ? {} : { random: options.random }),
    });
    this.timeouts = {
      registerTimeoutMs: options.registerTimeoutMs ?? 10_000,
      dialTimeoutMs: options.dialTimeoutMs ?? 15_000,
      streamHeaderTimeoutMs: options.streamHeaderTimeoutMs ?? 10_000,
      targetDialTimeoutMs: options.targetDialTimeoutMs ?? 5_000,
    };
  }

  /** Registered with at least one server that may route new streams to us. */
  get isReady(): boolean {
    return !this.stopping && [...this.sessions].some((s) => s.isServing);
  }

  /** Servers this agent is registered with and serving. */
  get servers(): AgentRegisteredEvent[] {
    return [...this.sessions]
      .filter((s) => s.isServing)
      .map((s) => ({ serverId: s.serverId as string, hostnames: s.hostnames }));
  }

  /** User connections being forwarded, over all sessions. */
  get activeStreams(): number {
    let n = 0;
    for (const s of this.sessions) n += s.streams;
    return n;
  }

  /** Where /healthz and /readyz listen, once started (undefined when healthListen is off). */
  get healthAddress(): AddressInfo | undefined {
    return this.health?.address;
  }

  /** Opens the health port (rejects if it cannot) and starts the connect loop. */
  async start(): Promise<void> {
    if (this.loop || this.stopping) throw new Error('TunnelAgent.start() may be called once');
    if (this.config.healthListen !== undefined) {
      this.health = new HealthServer({
        listen: this.config.healthListen,
        isReady: () => this.isReady,
        logger: this.log,
      });
      await this.health.listen();
    }
    this.loop = this.run();
  }

  /**
   * Graceful and idempotent: stop reconnecting, GoAway every session, let open streams finish
   * within drainTimeoutMs (then reset them), close the health port.
   */
  close(): Promise<void> {
    this.closePromise ??= (async () => {
      this.stop();
      const drainTimeoutMs = this.config.drainTimeoutMs;
      this.log.info(
        { sessions: this.sessions.size, streams: this.activeStreams, drainTimeoutMs },
        'agent draining',
      );
      await Promise.all([...this.sessions].map((s) => s.close(drainTimeoutMs)));
      await this.loop;
      await this.health?.close();
      this.log.info('agent stopped');
    })();
    return this.closePromise;
  }

  /** Immediate: every session and stream is reset. */
  destroy(): void {
    this.stop();
    for (const s of this.sessions) s.destroy();
    void this.health?.close();
  }

  private stop(): void {
    this.stopping = true;
    this.dialAbort?.abort();
    this.wake?.();
  }

  private async run(): Promise<void> {
    while (!this.stopping) {
      let delayMs: number;
      try {
        await this.connectOnce();
        if (this.stopping) break;
        delayMs = this.backoff.next();
        this.log.info({ delayMs, attempt: this.backoff.attempt }, 'reconnecting');
      } catch (err) {
        if (this.stopping) break;
        delayMs = this.failureDelay(asTunnelError(err), this.phase);
      }
      await this.sleep(delayMs);
    }
  }

  /** One session from dial to its end (or to the server's GoAway). Throws if it never registered. */
  private async connectOnce(): Promise<void> {
    this.phase = 'token';
    const token = await this.readToken();
    const routes = new RouteTable(clusterIdOf(token), this.config.route);
    this.phase = 'dial';
    this.dialAbort = new AbortController();
    const dialed = await dial({
      server: this.config.server,
      token,
      caFile: this.config.caFile,
      serverName: this.config.serverName,
      proxyUrl: this.config.proxyUrl,
      noProxy: this.config.noProxy,
      timeoutMs: this.timeouts.dialTimeoutMs,
      signal: this.dialAbort.signal,
    });
    this.dialAbort = undefined;
    if (this.stopping) {
      dialed.ws.terminate();
      return;
    }
    this.log.debug({ url: dialed.url, proxy: dialed.proxy }, 'connected');
    this.phase = 'register';
    const session = new AgentSession({
      ws: dialed.ws,
      routes,
      agentId: this.config.agentId,
      agentVersion: AGENT_VERSION,
      keepaliveIntervalMs: this.config.keepaliveIntervalMs,
      keepaliveTimeoutMs: this.config.keepaliveTimeoutMs,
      registerTimeoutMs: this.timeouts.registerTimeoutMs,
      streamHeaderTimeoutMs: this.timeouts.streamHeaderTimeoutMs,
      targetDialTimeoutMs: this.timeouts.targetDialTimeoutMs,
      logger: this.log,
    });
    this.sessions.add(session);
    const ended = session.whenClosed();
    let registered;
    try {
      registered = await session.register();
    } catch (err) {
      session.destroy();
      this.sessions.delete(session);
      throw err;
    }
    const { serverId, hostnames } = registered;
    const upSince = this.clock.now();
    this.backoff.connected();
    this.log.info({ serverId, hostnames }, 'agent registered');
    this.emit('registered', { serverId, hostnames } satisfies AgentRegisteredEvent);
    void ended.then((err) => {
      this.sessions.delete(session);
      const upMs = Math.round(this.clock.now() - upSince);
      if (err && !this.stopping) this.log.warn({ serverId, upMs, err }, 'session ended');
      else this.log.info({ serverId, upMs }, 'session ended');
      this.emit('disconnected', { serverId, err } satisfies AgentDisconnectedEvent);
    });
    const wentAway = new Promise<void>((resolve) => session.once('goaway', () => resolve()));
    await Promise.race([ended, wentAway]);
    if (!this.stopping && session.isGoingAway) {
      // The server is draining: its open streams finish in the background while we redial.
      void session.close(this.config.drainTimeoutMs);
    }
    this.backoff.disconnected();
  }

  /** Logs why the attempt failed and picks the delay before the next one. */
  private failureDelay(err: TunnelError, phase: Phase): number {
    const authRetryMs = this.config.authRetryMs;
    if (isCredentialRefusal(err)) {
      const { status, serverMessage } = err.details ?? {};
      this.log.error(
        { code: err.code, status, serverMessage, retryInMs: authRetryMs },
        'agent credentials refused',
      );
      return authRetryMs;
    }
    if (phase === 'token' || OPERATOR_ERROR_CODES.has(err.code)) {
      const message = phase === 'token' ? 'agent token unusable' : 'registration refused';
      this.log.error({ code: err.code, err, retryInMs: authRetryMs }, message);
      return authRetryMs;
    }
    const delayMs = this.backoff.next();
    const what = phase === 'register' ? 'registration failed' : 'connect failed';
    this.log.warn({ err, attempt: this.backoff.attempt, delayMs }, what);
    return delayMs;
  }

  /** The token, read afresh on every connect so a rotated Secret is picked up. */
  private async readToken(): Promise<string> {
    if (this.config.token !== undefined) return this.config.token;
    const file = this.config.tokenFile as string;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (cause) {
      const errno = (cause as NodeJS.ErrnoException).code;
      throw new TunnelError('TUN_ERR_CONFIG', `cannot read tokenFile ${file}: ${errno ?? 'error'}`, {
        cause,
      });
    }
    const token = text.trim();
    if (token === '') throw new TunnelError('TUN_ERR_CONFIG', `tokenFile ${file} is empty`);
    return token;
  }

  private sleep(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const handle = this.clock.setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        this.wake = undefined;
        this.clock.clearTimeout(handle);
        resolve();
      };
    });
  }
}

/** The cluster id from the token's `cluster` claim; the server verifies the signature, not us. */
function clusterIdOf(token: string): string {
  let cluster: unknown;
  try {
    cluster = decodeJwt(token)['cluster'];
  } catch (cause) {
    throw new TunnelError('TUN_ERR_TOKEN_INVALID', 'the agent token is not a JWT', { cause });
  }
  if (typeof cluster !== 'string' || !isValidClusterId(cluster)) {
    throw new TunnelError('TUN_ERR_TOKEN_INVALID', 'the agent token has no valid cluster claim');
  }
  return cluster;
}

function asTunnelError(err: unknown): TunnelError {
  if (err instanceof TunnelError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new TunnelError('TUN_ERR_PROTOCOL', `unexpected failure: ${message}`, { cause: err });
}
