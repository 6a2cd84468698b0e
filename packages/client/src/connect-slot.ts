/**
 * One connect loop of the agent (a slot): read the token, dial the server through the load
 * balancer, register the routes, serve the session until it ends, then dial again. The agent
 * runs one slot per server replica it wants a session to (TunnelAgent); each has its own backoff.
 *
 * - Refused credentials (HTTP 401/403) and operator errors (a route outside the token's cluster,
 *   an unsupported protocol version, an unusable token) are logged at error level and retried
 *   after `authRetryMs`: slow, so a misconfigured fleet never hammers the server.
 * - Every other failure backs off exponentially with full jitter; a session that stayed up
 *   `healthyResetMs` resets the delay.
 * - A server that sends GoAway (it is draining) keeps its streams until they finish while the
 *   slot dials a new session at once (the load balancer picks another replica).
 * - A session that lands on a replica another slot already holds (the host says 'duplicate') is
 *   closed at once: the load balancer picks replicas, so finding the missing one is a matter of
 *   dialing again. The slot probes in rounds: a burst of 2 × serverCount quick dials (a balancer
 *   whose other traffic interleaves lands each dial on the missing replica with about 1/serverCount
 *   odds: a burst finds it nine times in ten), then a pause of about `replicaProbeMs` (1 s)
 *   while the replica has been missing for a short time (a restart, a rolling update), growing
 *   with the time it has been missing up to `replicaProbeMaxMs` (serverCount above the real
 *   number of replicas: a warning after `replicaMissingWarnMs`, and a bounded dial rate, never a
 *   storm). Not the failure backoff: a restarted replica is found within seconds.
 */
import { readFile } from 'node:fs/promises';
import { decodeJwt } from 'jose';
import { TunnelError, isValidClusterId } from '@cluster-tunnel/protocol';
import type { Clock, ErrorCode, RegisteredMessage } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import { ServerSession } from './server-session.js';
import type { TargetDialer } from './target-dialer.js';
import type { AgentMetrics } from './metrics.js';
import { Backoff } from './backoff.js';
import type { ClientConfig } from './config.js';
import { dial, isCredentialRefusal } from './server-dialer.js';
import type { RouteCertificate } from './route-certificate.js';
import { RouteTable } from './route-table.js';

/** Quick dials in a probe burst are this far apart at most (jittered from 0). */
const BURST_GAP_MS = 20;

/** Codes after which retrying soon cannot help: an operator must change something. */
const OPERATOR_ERROR_CODES: ReadonlySet<ErrorCode> = new Set([
  'TUN_ERR_ROUTE_FORBIDDEN',
  'TUN_ERR_UNSUPPORTED_VERSION',
  'TUN_ERR_CONFIG',
]);

export interface SlotTimeouts {
  registerTimeoutMs: number;
  dialTimeoutMs: number;
  streamHeaderTimeoutMs: number;
  targetDialTimeoutMs: number;
  /** The pause between probe rounds for a replica missing a short time (jittered ±50%). */
  replicaProbeMs: number;
  /** The longest pause between probe rounds (a replica missing for long: a tenth of that time). */
  replicaProbeMaxMs: number;
  /** A replica missing this long is reported, once per streak: serverCount may be too high. */
  replicaMissingWarnMs: number;
}

/** What a slot shares with the agent that runs it. */
export interface SlotHost {
  readonly config: Readonly<ClientConfig>;
  readonly clock: Clock;
  /** Jitter source, uniform in [0, 1). */
  readonly random: () => number;
  readonly timeouts: SlotTimeouts;
  readonly agentVersion: string;
  /** Shared by every session: spare target connections are bounded per agent. */
  readonly targetDialer: TargetDialer;
  readonly metrics: AgentMetrics;
  /** The agent's route certificate, when it serves agent-tls routes. */
  readonly routeCertificate: RouteCertificate | undefined;
  /** The agent is shutting down: no more dials. */
  isStopping(): boolean;
  /** Whether this slot should dial (again); false ends its loop. */
  keepDialing(slot: ConnectSlot): boolean;
  /** The replicas the agent wants a session to (serverCount, capped): a probe burst's size. */
  wantedSessions(): number;
  /** A new session, tracked by the agent until it closes (readiness, drain, stream counts). */
  track(session: ServerSession): void;
  /** The session registered: 'duplicate' when another serving session holds its serverId. */
  registered(slot: ConnectSlot, session: ServerSession, message: RegisteredMessage): 'serving' | 'duplicate';
}

type Phase = 'token' | 'dial' | 'register';
type Outcome = 'ended' | 'goaway' | 'duplicate' | 'stopped';

export class ConnectSlot {
  readonly log: Logger;
  /** Resolves when the loop has ended (the agent stopped, or the slot is no longer wanted). */
  readonly done: Promise<void>;
  private readonly backoff: Backoff;
  private dialAbort: AbortController | undefined;
  private wake: (() => void) | undefined;
  /** How far the current attempt got: decides how its failure is logged and retried. */
  private phase: Phase = 'token';
  /** Sessions in this probe round that landed on a replica another slot holds. */
  private duplicates = 0;
  /** When this slot began to look for a missing replica (its first duplicate since serving). */
  private missingSince: number | undefined;
  private missingReported = false;

  constructor(
    readonly index: number,
    private readonly host: SlotHost,
    logger: Logger,
  ) {
    this.log = logger.child({ slot: index });
    const { config, clock } = host;
    this.backoff = new Backoff({
      initialMs: config.backoffInitialMs,
      maxMs: config.backoffMaxMs,
      healthyResetMs: config.healthyResetMs,
      now: () => clock.now(),
      random: host.random,
    });
    this.done = this.run();
  }

  /** Aborts a dial in progress and cuts a wait short; the loop then sees `host.isStopping()`. */
  stop(): void {
    this.dialAbort?.abort();
    this.wake?.();
  }

  private async run(): Promise<void> {
    // Let the constructor finish (and the host store this slot) before the first dial.
    await Promise.resolve();
    while (this.host.keepDialing(this)) {
      let delayMs: number;
      try {
        const outcome = await this.connectOnce();
        if (outcome === 'stopped' || !this.host.keepDialing(this)) break;
        delayMs =
          outcome === 'duplicate'
            ? this.duplicateDelay()
            : outcome === 'goaway'
              ? this.goAwayDelay()
              : this.backoff.next();
        if (outcome !== 'duplicate') {
          this.log.info(
            { delayMs, attempt: this.backoff.attempt, goAway: outcome === 'goaway' },
            'reconnecting',
          );
        }
      } catch (err) {
        if (!this.host.keepDialing(this)) break;
        delayMs = this.failureDelay(asTunnelError(err), this.phase);
      }
      await this.sleep(delayMs);
    }
  }

  /** One session from dial to its end (or to the server's GoAway). Throws if it never registered. */
  private async connectOnce(): Promise<Outcome> {
    const { config, timeouts } = this.host;
    this.phase = 'token';
    const token = await this.readToken();
    // close() may have come while the token file was read: no dial may start after it.
    if (this.host.isStopping()) return 'stopped';
    const routes = new RouteTable(clusterIdOf(token), config.route);
    this.phase = 'dial';
    this.dialAbort = new AbortController();
    const dialed = await dial({
      server: config.server,
      token,
      caFile: config.caFile,
      serverName: config.serverName,
      proxyUrl: config.proxyUrl,
      noProxy: config.noProxy,
      timeoutMs: timeouts.dialTimeoutMs,
      signal: this.dialAbort.signal,
    });
    this.dialAbort = undefined;
    if (this.host.isStopping()) {
      dialed.socket.destroy();
      return 'stopped';
    }
    this.log.debug({ url: dialed.url, proxy: dialed.proxy }, 'connected');
    this.phase = 'register';
    const session = new ServerSession({
      socket: dialed.socket,
      head: dialed.head,
      routes,
      agentId: config.agentId,
      agentVersion: this.host.agentVersion,
      keepaliveIntervalMs: config.keepaliveIntervalMs,
      keepaliveTimeoutMs: config.keepaliveTimeoutMs,
      registerTimeoutMs: timeouts.registerTimeoutMs,
      streamHeaderTimeoutMs: timeouts.streamHeaderTimeoutMs,
      targetDialTimeoutMs: timeouts.targetDialTimeoutMs,
      targetDialer: this.host.targetDialer,
      logger: this.log,
      metrics: this.host.metrics,
      routeCertificate: this.host.routeCertificate,
    });
    this.host.track(session);
    const ended = session.whenClosed();
    let registered;
    try {
      registered = await session.register();
    } catch (err) {
      session.destroy();
      throw err;
    }
    const served = this.host.registered(this, session, registered);
    this.host.metrics.connects.inc({ outcome: served === 'duplicate' ? 'duplicate' : 'registered' });
    if (served === 'duplicate') {
      // Not a failure: the load balancer sent us to a replica we hold. Leave cleanly, dial again.
      void session.close(config.drainTimeoutMs);
      this.duplicates += 1;
      this.missingSince ??= this.host.clock.now();
      return 'duplicate';
    }
    this.duplicates = 0;
    if (this.missingSince !== undefined) {
      const missingMs = Math.round(this.host.clock.now() - this.missingSince);
      this.log.info({ serverId: registered.serverId, missingMs }, 'missing server replica found');
    }
    this.missingSince = undefined;
    this.missingReported = false;
    this.backoff.connected();
    const wentAway = new Promise<void>((resolve) => session.once('goaway', () => resolve()));
    await Promise.race([ended, wentAway]);
    const drained = !this.host.isStopping() && session.isGoingAway;
    if (drained) {
      // The server is draining: its open streams finish in the background while we redial.
      void session.close(config.drainTimeoutMs);
    }
    this.backoff.disconnected();
    return drained ? 'goaway' : 'ended';
  }

  /**
   * After a server's GoAway (it drains: a restart, a rolling update): dial again soon, jittered
   * in [0, backoffInitialMs] so its agents do not all arrive at once, and without growing the
   * backoff: nothing failed.
   */
  private goAwayDelay(): number {
    return Math.floor(Math.min(Math.max(this.host.random(), 0), 1) * this.host.config.backoffInitialMs);
  }

  /**
   * After a duplicate session: the next dial of the burst at once, or, once the burst is spent,
   * a pause that grows with how long the replica has been missing (REPLICA_PROBE_MS at first,
   * a tenth of the time missing later, at most REPLICA_PROBE_MAX_MS), jittered ±50%.
   */
  private duplicateDelay(): number {
    const random = Math.min(Math.max(this.host.random(), 0), 1);
    const missingMs = this.host.clock.now() - (this.missingSince ?? this.host.clock.now());
    if (this.duplicates < 2 * this.host.wantedSessions()) {
      const delayMs = Math.floor(random * BURST_GAP_MS);
      this.log.debug({ duplicates: this.duplicates, delayMs }, 'duplicate server session');
      return delayMs;
    }
    this.duplicates = 0;
    const { replicaProbeMs, replicaProbeMaxMs, replicaMissingWarnMs } = this.host.timeouts;
    const pauseMs = Math.min(replicaProbeMaxMs, Math.max(replicaProbeMs, Math.floor(missingMs / 10)));
    const delayMs = Math.floor(pauseMs * (0.5 + random));
    this.log.debug({ missingMs: Math.round(missingMs), delayMs }, 'server replica still missing');
    if (missingMs >= replicaMissingWarnMs && !this.missingReported) {
      // Once per streak: a replica is down for long, or serverCount exceeds the replicas.
      this.missingReported = true;
      this.log.warn(
        { serverCount: this.host.wantedSessions(), missingMs: Math.round(missingMs), probeEveryMs: pauseMs },
        'a server replica is missing: is serverCount above the replicas?',
      );
    }
    return delayMs;
  }

  /** Logs why the attempt failed and picks the delay before the next one. */
  private failureDelay(err: TunnelError, phase: Phase): number {
    const authRetryMs = this.host.config.authRetryMs;
    const { connects } = this.host.metrics;
    if (isCredentialRefusal(err)) {
      connects.inc({ outcome: 'refused' });
      const { status, serverMessage } = err.details ?? {};
      this.log.error(
        { code: err.code, status, serverMessage, retryInMs: authRetryMs },
        'agent credentials refused',
      );
      return authRetryMs;
    }
    if (phase === 'token' || OPERATOR_ERROR_CODES.has(err.code)) {
      connects.inc({ outcome: 'refused' });
      const message = phase === 'token' ? 'agent token unusable' : 'registration refused';
      this.log.error({ code: err.code, err, retryInMs: authRetryMs }, message);
      return authRetryMs;
    }
    connects.inc({ outcome: 'failed' });
    const delayMs = this.backoff.next();
    const what = phase === 'register' ? 'registration failed' : 'connect failed';
    this.log.warn({ err, attempt: this.backoff.attempt, delayMs }, what);
    return delayMs;
  }

  /** The token, read afresh on every connect so a rotated Secret is picked up. */
  private async readToken(): Promise<string> {
    const { config } = this.host;
    if (config.token !== undefined) return config.token;
    const file = config.tokenFile as string;
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
    if (this.host.isStopping()) return Promise.resolve();
    const { clock } = this.host;
    return new Promise((resolve) => {
      const handle = clock.setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      this.wake = () => {
        this.wake = undefined;
        clock.clearTimeout(handle);
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
