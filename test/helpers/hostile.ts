/**
 * Attackers as test fixtures (docs/SECURITY.md): an agent with a valid token that speaks the
 * protocol badly over a real WebSocket to a real server process, the server's figures read from
 * its /metrics, and the kubectl latency of a bystander cluster.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Duplex } from 'node:stream';
import { dial } from '../../packages/client/src/server-dialer.js';
import {
  CONTROL_PROTOCOL_VERSION,
  ControlChannel,
  Flag,
  FrameType,
  YamuxSession,
  createWebSocketDuplex,
  encodeControlMessage,
  encodeHeader,
  type ControlMessage,
  type RegisterMessage,
} from '@cluster-tunnel/protocol';
import { defer } from './cleanup.js';
import { runKubectl } from './kubectl.js';
import { pollUntil } from './streams.js';
import type { ServerHandle } from './tunnel.js';

/** Where a raw agent dials: a spawned server (ServerHandle) or one in the test's own process. */
export type AgentTarget = Pick<ServerHandle, 'url' | 'caFile'>;

/** A WebSocket to the server's /connect, accepted with `token`, before any yamux. */
export async function dialRaw(server: AgentTarget, token: string): Promise<Duplex> {
  const dialed = await dial({
    server: server.url,
    token,
    caFile: server.caFile,
    noProxy: [],
    timeoutMs: 5_000,
  });
  const ws = createWebSocketDuplex(dialed.socket, { role: 'client', head: dialed.head });
  ws.on('error', () => undefined);
  defer(() => {
    ws.destroy();
  });
  return ws;
}

/** Raw yamux frames, whole, for writing to a WebSocket from dialRaw. */
export const frames = {
  ping: (id: number): Buffer => encodeHeader(FrameType.Ping, Flag.SYN, 0, id),
  syn: (streamId: number): Buffer => encodeHeader(FrameType.WindowUpdate, Flag.SYN, streamId, 0),
  emptyUpdate: (streamId: number): Buffer => encodeHeader(FrameType.WindowUpdate, 0, streamId, 0),
  data: (streamId: number, payload: Buffer, flags = 0): Buffer =>
    Buffer.concat([encodeHeader(FrameType.Data, flags, streamId, payload.length), payload]),
  /** Opens stream 1 and sends `register` on it, as an agent's first bytes. */
  register: (routes: string[], agentId = 'hostile'): Buffer =>
    frames.data(
      1,
      encodeControlMessage({
        type: 'register',
        protocolVersion: CONTROL_PROTOCOL_VERSION,
        agentId,
        agentVersion: '0.1.0',
        routes,
      }),
      Flag.SYN,
    ),
};

/**
 * A registered agent whose yamux session is ours (a real YamuxSession over dialRaw's WebSocket),
 * so a test can misbehave after registration by writing raw frames to `ws` next to it. Its
 * `register` is an agent's of the first release (no capabilities) unless `fields` say otherwise.
 */
export async function registerRaw(
  server: AgentTarget,
  token: string,
  routes: string[],
  fields: Partial<Omit<RegisterMessage, 'type'>> = {},
): Promise<{ ws: Duplex; session: YamuxSession; control: ControlChannel; registered: ControlMessage }> {
  const ws = await dialRaw(server, token);
  const session = new YamuxSession(ws, { role: 'client', keepaliveIntervalMs: 0 });
  session.on('error', () => undefined);
  defer(() => session.destroy());
  const control = new ControlChannel(session.open());
  const answer = control.next(5_000);
  control.send({
    type: 'register',
    protocolVersion: CONTROL_PROTOCOL_VERSION,
    agentId: 'hostile',
    agentVersion: '0.1.0',
    routes,
    ...fields,
  });
  return { ws, session, control, registered: await answer };
}

/** Writes `count` frames from `make` in 64 KiB batches, waiting for drain: bounded in count. */
export async function writeFrames(ws: Duplex, count: number, make: (i: number) => Buffer): Promise<void> {
  let batch: Buffer[] = [];
  let size = 0;
  const flush = async (): Promise<void> => {
    if (batch.length === 0 || ws.destroyed) return;
    const ok = ws.write(Buffer.concat(batch));
    batch = [];
    size = 0;
    if (!ok) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          ws.off('drain', done);
          ws.off('close', done);
          resolve();
        };
        ws.once('drain', done);
        ws.once('close', done);
      });
    }
  };
  for (let i = 0; i < count && !ws.destroyed; i++) {
    const frame = make(i);
    if (size + frame.length > 64 * 1024) await flush();
    batch.push(frame);
    size += frame.length;
  }
  await flush();
}

/** One sample of a server's Prometheus metric (the first series whose labels include `labels`). */
export async function serverMetric(
  server: ServerHandle,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${server.adminPort}/metrics`);
  const text = await res.text();
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-z_]+)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const labelText = match[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) return Number(match[3]);
  }
  return 0;
}

/** Samples the server's resident memory every 100 ms while `work` runs; resolves with the peak. */
export async function peakRssDuring(server: ServerHandle, work: Promise<unknown>): Promise<number> {
  let peak = await serverMetric(server, 'process_resident_memory_bytes');
  let done = false;
  const finished = work.finally(() => {
    done = true;
  });
  finished.catch(() => undefined); // awaited below, after sampling
  // A sample, then the check: the last sample is taken after the work has ended.
  await pollUntil(
    async () => {
      const wasDone = done;
      peak = Math.max(peak, await serverMetric(server, 'process_resident_memory_bytes'));
      return wasDone;
    },
    60_000,
    'the work whose memory is sampled',
    100,
  );
  await finished;
  return peak;
}

/** Latency of `runs` runs of `kubectl get pods`, each required to succeed. */
export interface KubectlLatency {
  medianMs: number;
  /** The slowest run: a request that stalled behind an attack shows here, not in the median. */
  maxMs: number;
}

export async function kubectlLatency(kubeconfig: string, runs = 5): Promise<KubectlLatency> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    const result = await runKubectl(['get', 'pods', '-o', 'name'], { kubeconfig, timeoutMs: 20_000 });
    if (result.code !== 0) throw new Error(`kubectl failed during the measurement: ${result.stderr}`);
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return { medianMs: times[Math.floor(times.length / 2)]!, maxMs: times.at(-1)! };
}

const ATTACKER = join(import.meta.dirname, 'attacker.mjs');

export interface AttackRound {
  round?: number;
  sent?: number;
  /** password-guess: how many answers of each HTTP status. */
  statuses?: Record<string, number>;
  closedBy?: string;
  error?: string;
  done?: boolean;
}

export interface AttackOptions {
  /** An agent token, for the attacks of an agent. */
  token?: string;
  /** Attack loops side by side (anonymous attacks hold many connections). */
  connections?: number;
  /** The source address, 127.0.0.x: a per-address limit counts it apart from the test's own. */
  localAddress?: string;
  durationMs?: number;
  /** The route hostname, for attacks on an http route. */
  host?: string;
}

/**
 * Runs test/helpers/attacker.mjs (a process of its own, as a real attacker is) until stopped or
 * `durationMs`; killed when the test ends. `rounds` fills with its report lines.
 */
export function startAttacker(
  server: ServerHandle,
  kind: string,
  o: AttackOptions = {},
): { rounds: AttackRound[]; stop: () => Promise<void> } {
  const args = [ATTACKER, '--kind', kind, '--port', String(server.port), '--ca', server.caFile];
  args.push('--duration-ms', String(o.durationMs ?? 30_000));
  if (o.token !== undefined) args.push('--token', o.token);
  if (o.connections !== undefined) args.push('--connections', String(o.connections));
  if (o.localAddress !== undefined) args.push('--local-address', o.localAddress);
  if (o.host !== undefined) args.push('--host', o.host);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const rounds: AttackRound[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) =>
    rounds.push(JSON.parse(line) as AttackRound),
  );
  const exited = new Promise((r) => child.once('exit', r));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  defer(stop);
  return { rounds, stop };
}

/**
 * The most a bystander's median kubectl may take under attack: twice idle, and never less than
 * idle plus 250 ms. Idle is about 50 ms, and a machine busy with other work moves a median by
 * tens of milliseconds either way; an attack that hurts costs seconds (the stalls measured before
 * the limits existed), so the floor keeps the check about the attack, not about jitter.
 */
export function latencyBoundMs(idle: KubectlLatency): number {
  return Math.max(2 * idle.medianMs, idle.medianMs + 250);
}

export interface AttackEffect {
  idle: KubectlLatency;
  attack: KubectlLatency;
  /** The server's resident memory at its peak during the attack, less before it. */
  rssGrowthBytes: number;
}

/**
 * What an attack does to a bystander: kubectl latency against `kubeconfig` idle, then while the
 * attacker `start` launches is on (`on` tells when it has reached the server), and the server's
 * memory growth meanwhile. Stops the attacker and prints the figures under `what`.
 */
export async function underAttack(
  server: ServerHandle,
  kubeconfig: string,
  start: () => { stop: () => Promise<void> },
  on: () => boolean | Promise<boolean>,
  what: string,
): Promise<AttackEffect> {
  const idle = await kubectlLatency(kubeconfig);
  const rssBefore = await serverMetric(server, 'process_resident_memory_bytes');
  const attacker = start();
  await pollUntil(on, 10_000, 'the attack to reach the server');
  let attack: KubectlLatency = { medianMs: 0, maxMs: 0 };
  const peak = await peakRssDuring(
    server,
    kubectlLatency(kubeconfig).then((l) => (attack = l)),
  );
  await attacker.stop();
  const effect = { idle, attack, rssGrowthBytes: peak - rssBefore };
  console.log(
    `hostile ${what}: kubectl idle ${idle.medianMs.toFixed(0)} ms, under attack ${attack.medianMs.toFixed(0)} ms ` +
      `(slowest ${attack.maxMs.toFixed(0)}); server RSS +${(effect.rssGrowthBytes / 2 ** 20).toFixed(1)} MiB`,
  );
  return effect;
}
