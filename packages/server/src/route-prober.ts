/**
 * Data-path probes (docs/OPERATIONS.md, "Probes"): is cluster X reachable right now through the
 * data path, not just "its agent has a socket"? On an interval (probeIntervalMs), and on demand
 * (POST /probe on the admin port), each route of each agent that speaks `probe-streams` gets a
 * probe stream: the agent connects to the route's target (TLS done for an https target) and
 * answers how long that took. Kept: the last result per agent and route, forgotten when the
 * agent leaves. Bounded: PROBES_IN_FLIGHT at once, each within agentReplyTimeoutMs, answers of
 * at most MAX_PROBE_ANSWER_BYTES.
 */
import {
  CAPABILITIES,
  MAX_PROBE_ANSWER_BYTES,
  TunnelError,
  readStreamReply,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { AgentRegistry } from './agent-registry.js';
import type { ServerMetrics } from './metrics.js';
import type { RegisteredAgent } from './registered-agent.js';

/** Probe streams open at once, over all agents. */
export const PROBES_IN_FLIGHT = 8;

export interface ProbeResult {
  agentId: string;
  clusterId: string;
  route: string;
  ok: boolean;
  /** Why not: the agent's code (TUN_ERR_DIAL_FAILED with the errno in `message`), or a timeout. */
  code?: string;
  message?: string;
  /** The agent's connect to the target (TLS included), when it succeeded. */
  dialMs?: number;
  /** The whole probe as the server saw it: the tunnel's round trip plus the dial. */
  totalMs: number;
  /** When it was taken (ISO 8601). */
  at: string;
}

export interface RouteProberOptions {
  registry: AgentRegistry;
  /** 0: only on demand. */
  intervalMs: number;
  replyTimeoutMs: number;
  serverId: string;
  metrics: ServerMetrics;
  log: Logger;
}

export class RouteProber {
  /** Last result by agent, then route. Agents are the registry's objects: gone with them. */
  private readonly results = new Map<RegisteredAgent, Map<string, ProbeResult>>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<ProbeResult[]> | undefined;

  constructor(private readonly o: RouteProberOptions) {
    o.registry.on('removed', (agent) => this.results.delete(agent));
  }

  start(): void {
    if (this.o.intervalMs <= 0) return;
    const tick = (): void => {
      void this.probeAll().finally(() => {
        if (this.timer !== undefined) this.timer = setTimeout(tick, this.o.intervalMs).unref();
      });
    };
    this.timer = setTimeout(tick, this.o.intervalMs).unref();
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The last result of every probed agent route. */
  latest(): ProbeResult[] {
    return [...this.results.values()].flatMap((byRoute) => [...byRoute.values()]);
  }

  /**
   * Probes every route of every agent (or only `route`) now; concurrent callers share one run.
   * Resolves with this run's results.
   */
  probeAll(route?: string): Promise<ProbeResult[]> {
    if (route === undefined && this.running) return this.running;
    const jobs: Array<[RegisteredAgent, string]> = [];
    for (const agent of this.o.registry.all()) {
      if (!agent.usable || !agent.capabilities.has(CAPABILITIES.probeStreams)) continue;
      for (const label of agent.labels) if (route === undefined || label === route) jobs.push([agent, label]);
    }
    const run = this.runJobs(jobs);
    if (route === undefined) {
      this.running = run.finally(() => {
        this.running = undefined;
      });
    }
    return run;
  }

  private async runJobs(jobs: Array<[RegisteredAgent, string]>): Promise<ProbeResult[]> {
    const done: ProbeResult[] = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      for (let job = jobs[next++]; job !== undefined; job = jobs[next++]) {
        done.push(await this.probeOne(job[0], job[1]));
      }
    };
    await Promise.all(Array.from({ length: Math.min(PROBES_IN_FLIGHT, jobs.length) }, worker));
    return done;
  }

  private async probeOne(agent: RegisteredAgent, route: string): Promise<ProbeResult> {
    const startedAt = performance.now();
    const base = { agentId: agent.identity.agentId, clusterId: agent.identity.clusterId, route };
    let result: ProbeResult;
    let stream: YamuxStream | undefined;
    try {
      stream = agent.openStream({ type: 'probe', route, remoteAddress: `probe from ${this.o.serverId}` });
      stream.on('error', () => undefined);
      stream.end();
      const reply = await readStreamReply(stream, this.o.replyTimeoutMs);
      if (reply.ok) {
        const answer = await readAnswer(stream, this.o.replyTimeoutMs);
        result = { ...base, ok: true, dialMs: answer.dialMs, totalMs: ms(startedAt), at: now() };
      } else {
        result = {
          ...base,
          ok: false,
          code: reply.code,
          message: reply.message,
          totalMs: ms(startedAt),
          at: now(),
        };
      }
    } catch (err) {
      const e = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_PROTOCOL', String(err));
      result = { ...base, ok: false, code: e.code, message: e.message, totalMs: ms(startedAt), at: now() };
    } finally {
      stream?.destroy();
    }
    this.o.metrics.probes.inc({ outcome: result.ok ? 'ok' : 'failed' });
    this.o.metrics.probeSeconds.observe(result.totalMs / 1000);
    if (!result.ok) this.o.log.info({ ...result }, 'probe failed');
    // Only while the agent is still here: a late result must not bring a gone agent back.
    if (!agent.session.isClosed) {
      const byRoute = this.results.get(agent) ?? new Map<string, ProbeResult>();
      byRoute.set(route, result);
      this.results.set(agent, byRoute);
    }
    return result;
  }
}

/** The JSON after an ok reply: `{"dialMs":n}`, at most MAX_PROBE_ANSWER_BYTES. */
function readAnswer(stream: YamuxStream, timeoutMs: number): Promise<{ dialMs: number | undefined }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => finish(new TunnelError('TUN_ERR_TIMEOUT', 'no probe answer')), timeoutMs);
    const finish = (err?: TunnelError): void => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      if (err) return reject(err);
      try {
        const parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { dialMs?: unknown };
        resolve({ dialMs: typeof parsed.dialMs === 'number' ? parsed.dialMs : undefined });
      } catch {
        reject(new TunnelError('TUN_ERR_PROTOCOL', 'a probe answer that is not JSON'));
      }
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > MAX_PROBE_ANSWER_BYTES)
        return finish(new TunnelError('TUN_ERR_LIMIT_EXCEEDED', 'probe answer too long'));
      chunks.push(chunk);
    };
    const onEnd = (): void => finish();
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.resume();
  });
}

const ms = (since: number): number => Math.round((performance.now() - since) * 10) / 10;
const now = (): string => new Date().toISOString();
