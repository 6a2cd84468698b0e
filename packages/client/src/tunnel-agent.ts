/**
 * The agent: one connect loop (a slot, connect-slot.ts) per server replica it wants a session
 * to, so that every replica behind the load balancer can route to it (docs/ARCHITECTURE.md, "Many
 * replicas"). It starts with one slot; a `registered` that says serverCount = k grows it to k
 * (at most MAX_SLOTS). A lower count retires the slots beyond it once their session ends: no
 * live session is closed for it. A slot whose session lands on a replica another serving
 * session already holds closes it and dials again (connect-slot.ts says how soon).
 *
 * Ready while registered with at least one server. close()/destroy() cover every slot.
 *
 * Events: 'registered' ({ serverId, hostnames }), 'disconnected' ({ serverId, err }).
 */
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type { Clock, RegisteredMessage, TunnelError } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { ServerSession } from './server-session.js';
import type { ClientConfig } from './config.js';
import { ConnectSlot } from './connect-slot.js';
import type { SlotHost } from './connect-slot.js';
import { HealthServer } from './health.js';
import { TargetDialer } from './target-dialer.js';
import { AgentMetrics } from './metrics.js';
import { RouteCertificate } from './route-certificate.js';
import { targetOf } from './route-table.js';

/** The package version, sent in `register` and shown by --version. */
export const AGENT_VERSION: string = (
  createRequire(import.meta.url)('../package.json') as { version: string }
).version;

/** The most server replicas an agent keeps sessions to, whatever serverCount says. */
export const MAX_SLOTS = 16;

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
   * (its agentReplyTimeoutMs, 10 s by default), so the server hears why rather than timing out.
   */
  targetDialTimeoutMs?: number;
  /** Probing for a missing replica (connect-slot.ts): the pause between rounds (default 1 s). */
  replicaProbeMs?: number;
  /** The longest pause between probe rounds (default 30 s). */
  replicaProbeMaxMs?: number;
  /** A replica missing this long is reported (default 60 s). */
  replicaMissingWarnMs?: number;
  /** Epoch milliseconds, for route certificate lifetimes (default Date.now). */
  now?: () => number;
}

export interface AgentRegisteredEvent {
  serverId: string;
  hostnames: readonly string[];
}

export interface AgentDisconnectedEvent {
  serverId: string;
  err: TunnelError | undefined;
}

export class TunnelAgent extends EventEmitter {
  readonly config: Readonly<ClientConfig>;
  private readonly log: Logger;
  private readonly clock: Clock;
  /** What every slot shares with the agent. */
  private readonly host: SlotHost;
  private readonly dialer: TargetDialer;
  /** Served on the health port at /metrics. */
  readonly metrics = new AgentMetrics();
  private readonly sessions = new Set<ServerSession>();
  /** Configured targets, and whether the last connect to each failed. */
  private readonly targets: ReadonlySet<string>;
  private readonly lastDialFailed = new Map<string, boolean>();
  /** Running slots by index. Indexes below wantedSlots keep dialing; the rest end after their session. */
  private readonly slots = new Map<number, ConnectSlot>();
  private wantedSlots = 1;
  private health: HealthServer | undefined;
  /** What agent-tls routes end users' TLS with; undefined without such routes. */
  readonly routeCertificate: RouteCertificate | undefined;
  private started = false;
  private stopping = false;
  private closePromise: Promise<void> | undefined;

  constructor(config: Readonly<ClientConfig>, options: TunnelAgentOptions) {
    super();
    this.config = config;
    this.log = options.logger;
    this.clock = options.clock ?? agentClock;
    const targetDialTimeoutMs = options.targetDialTimeoutMs ?? 5_000;
    this.targets = new Set(config.route.map(targetOf));
    this.dialer = new TargetDialer({
      spareConnections: config.targetSpareConnections,
      spareIdleMs: config.targetSpareIdleMs,
      dialTimeoutMs: targetDialTimeoutMs,
      clock: this.clock,
      logger: this.log,
      onConnect: (target, ms, errno) => {
        if (errno === undefined) this.metrics.targetDialSeconds.observe(ms / 1000);
        else this.metrics.targetDialFailures.inc({ errno });
        this.lastDialFailed.set(target, errno !== undefined);
      },
    });
    this.metrics.attach({
      sessions: () =>
        [...this.sessions].map((s) => ({ serving: s.isServing, streams: s.streams, stats: s.session.stats })),
      wantedSessions: () => this.wantedSlots,
    });
    this.routeCertificate = config.route.some((r) => r.mode === 'agent-tls')
      ? new RouteCertificate({
          clock: this.clock,
          now: options.now ?? Date.now,
          log: this.log,
          metrics: this.metrics,
          sessions: () => this.sessions,
        })
      : undefined;
    this.host = {
      config,
      clock: this.clock,
      routeCertificate: this.routeCertificate,
      random: options.random ?? Math.random,
      timeouts: {
        registerTimeoutMs: options.registerTimeoutMs ?? 10_000,
        dialTimeoutMs: options.dialTimeoutMs ?? 15_000,
        streamHeaderTimeoutMs: options.streamHeaderTimeoutMs ?? 10_000,
        targetDialTimeoutMs,
        replicaProbeMs: options.replicaProbeMs ?? 1_000,
        replicaProbeMaxMs: options.replicaProbeMaxMs ?? 30_000,
        replicaMissingWarnMs: options.replicaMissingWarnMs ?? 60_000,
      },
      agentVersion: AGENT_VERSION,
      targetDialer: this.dialer,
      metrics: this.metrics,
      isStopping: () => this.stopping,
      keepDialing: (slot) => this.keepDialing(slot),
      wantedSessions: () => this.wantedSlots,
      track: (session) => this.track(session),
      registered: (slot, session, message) => this.onRegistered(slot, session, message),
    };
  }

  /**
   * Registered with at least one server that may route new streams to us, not cut off from
   * every target (the last connect to each configured target, by users, spares or the servers'
   * probes, failed; a target not dialed yet counts as reachable), and holding a valid route
   * certificate when it serves agent-tls routes.
   */
  get isReady(): boolean {
    return (
      !this.stopping &&
      [...this.sessions].some((s) => s.isServing) &&
      !this.targetsUnreachable &&
      !this.routeCertificateMissing
    );
  }

  /** It serves agent-tls routes and holds no valid certificate for them (none yet, or expired). */
  get routeCertificateMissing(): boolean {
    return this.routeCertificate !== undefined && this.routeCertificate.current === undefined;
  }

  /** Every configured target's last connect failed. */
  get targetsUnreachable(): boolean {
    for (const target of this.targets) if (this.lastDialFailed.get(target) !== true) return false;
    return this.targets.size > 0;
  }

  /** Servers this agent is registered with and serving. */
  get servers(): AgentRegisteredEvent[] {
    return [...this.sessions]
      .filter((s) => s.isServing)
      .map((s) => ({ serverId: s.serverId as string, hostnames: s.hostnames }));
  }

  /** How many connect loops run: one per server replica wanted (until a retired one's session ends). */
  get slotCount(): number {
    return this.slots.size;
  }

  /** User connections being forwarded, over all sessions. */
  get activeStreams(): number {
    let n = 0;
    for (const s of this.sessions) n += s.streams;
    return n;
  }

  /** Spare target connections ready to hand to the next user stream (target-dialer.ts). */
  get spareTargetConnections(): number {
    return this.dialer.spareCount;
  }

  /** Where /healthz and /readyz listen, once started (undefined when healthListen is off). */
  get healthAddress(): AddressInfo | undefined {
    return this.health?.address;
  }

  /** Opens the health port (rejects if it cannot) and starts the first connect slot. */
  async start(): Promise<void> {
    if (this.started || this.stopping) throw new Error('TunnelAgent.start() may be called once');
    this.started = true;
    for (const r of this.config.route) {
      if (r.insecure)
        this.log.warn({ route: r.name, target: targetOf(r) }, 'target TLS not verified (insecure)');
    }
    // The key pair first: the first registration asks for a certificate with it.
    await this.routeCertificate?.start();
    if (this.config.healthListen !== undefined) {
      this.health = new HealthServer({
        listen: this.config.healthListen,
        isReady: () => this.isReady,
        notReadyReason: () =>
          this.targetsUnreachable
            ? 'no route target reachable'
            : [...this.sessions].some((s) => s.isServing)
              ? 'no valid route certificate'
              : 'not registered with any server',
        metrics: this.metrics.registry,
        logger: this.log,
      });
      await this.health.listen();
    }
    this.fillSlots();
  }

  /**
   * Graceful and idempotent: stop every slot, GoAway every session, let open streams finish
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
      await Promise.all([...this.slots.values()].map((slot) => slot.done));
      await this.health?.close();
      this.log.info('agent stopped');
    })();
    return this.closePromise;
  }

  /** Immediate: every slot stops, every session and stream is reset. */
  destroy(): void {
    this.stop();
    for (const s of this.sessions) s.destroy();
    void this.health?.close();
  }

  private keepDialing(slot: ConnectSlot): boolean {
    if (this.stopping) return false;
    if (slot.index < this.wantedSlots) return true;
    // Retired by a lower serverCount: leave the map now, so a later rise starts a fresh slot.
    if (this.slots.get(slot.index) === slot) this.slots.delete(slot.index);
    slot.log.debug({ wantedSlots: this.wantedSlots }, 'connect slot retired');
    return false;
  }

  private track(session: ServerSession): void {
    this.sessions.add(session);
    void session.whenClosed().then(() => this.sessions.delete(session));
  }

  /** Adopts the serverCount; 'duplicate' when another serving session holds the serverId, else serving. */
  private onRegistered(
    slot: ConnectSlot,
    session: ServerSession,
    message: RegisteredMessage,
  ): 'serving' | 'duplicate' {
    const { serverId, hostnames, serverCount } = message;
    // Every answer tells the replica count, a duplicate's too; an older server says nothing.
    if (serverCount !== undefined) this.setServerCount(serverCount);
    for (const other of this.sessions) {
      if (other !== session && other.isServing && other.serverId === serverId) return 'duplicate';
    }
    const upSince = this.clock.now();
    const capabilities = [...session.capabilities];
    slot.log.info({ serverId, serverCount, hostnames, capabilities }, 'agent registered');
    const unpublished = session.unpublished;
    if (unpublished.length > 0) {
      // An http route on a server without the http mode (or an older one): nobody reaches it there.
      slot.log.warn(
        { serverId, routes: unpublished, code: 'TUN_ERR_UNKNOWN_ROUTE' },
        'routes not published by this server',
      );
    }
    this.emit('registered', { serverId, hostnames } satisfies AgentRegisteredEvent);
    this.routeCertificate?.onRegistered(hostnames, session.agentTlsLabels);
    void session.whenClosed().then((err) => {
      const upMs = Math.round(this.clock.now() - upSince);
      this.metrics.sessionEnds.inc({ cause: err?.code ?? (session.isGoingAway ? 'goaway' : 'clean') });
      if (err && !this.stopping) slot.log.warn({ serverId, upMs, err }, 'session ended');
      else slot.log.info({ serverId, upMs }, 'session ended');
      this.emit('disconnected', { serverId, err } satisfies AgentDisconnectedEvent);
    });
    return 'serving';
  }

  /** Grows to one slot per replica (at most MAX_SLOTS); a lower count retires slots lazily. */
  private setServerCount(serverCount: number): void {
    const wanted = Math.min(serverCount, MAX_SLOTS);
    if (wanted === this.wantedSlots) return;
    this.log.info({ serverCount, slots: wanted, previousSlots: this.wantedSlots }, 'server count changed');
    this.wantedSlots = wanted;
    this.fillSlots();
  }

  /** Starts a slot for every wanted index that has none running. */
  private fillSlots(): void {
    if (this.stopping) return;
    for (let i = 0; i < this.wantedSlots; i++) {
      if (this.slots.has(i)) continue;
      const slot = new ConnectSlot(i, this.host, this.log);
      this.slots.set(i, slot);
      void slot.done.then(() => {
        if (this.slots.get(i) === slot) this.slots.delete(i);
      });
    }
  }

  private stop(): void {
    this.stopping = true;
    this.routeCertificate?.close();
    // Draining: no new streams will come, so no spare will be used.
    this.dialer.close();
    for (const slot of this.slots.values()) slot.stop();
  }
}
