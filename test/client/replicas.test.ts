// The agent behind an L4 load balancer in front of several server replicas: one connect slot per
// replica the servers announce (serverCount), one session to each distinct serverId, duplicates
// closed and redialed soon, a missing replica probed in bounded rounds, a lower count retiring slots lazily, and
// close() covering every slot. The replicas are scripted servers (test/helpers/raw-server.ts:
// TLS + WebSocket + yamux) because what is under test is the agent's answer to what servers
// announce, including counts that change and servers that announce none; real server processes
// behind a balancer are test/e2e/replicas.test.ts.
import { randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';
import { describe, expect, onTestFinished, test } from 'vitest';
import { decodeControlMessage } from '../../packages/protocol/src/tunnel/control.js';
import { resolveClientConfig } from '../../packages/client/src/config.js';
import { MAX_SLOTS, TunnelAgent, type TunnelAgentOptions } from '../../packages/client/src/tunnel-agent.js';
import { startLoadBalancer } from '../helpers/load-balancer.js';
import { LEVEL, captureLogs, echoTarget, readAll, writeFile } from './fixtures.js';
import { tempDir } from '../helpers/temp-dir.js';
import type { LogLine } from './fixtures.js';
import { RawServer, registeredAs } from '../helpers/raw-server.js';
import { flushIo, pollUntil } from '../helpers/streams.js';

const SIGNING_KEY = new TextEncoder().encode('replica-tests-hmac-key-replica-tests-hmac');

function agentToken(cluster: string): Promise<string> {
  return new SignJWT({ cluster })
    .setProtectedHeader({ alg: 'HS256' })
    .setJti(randomBytes(8).toString('hex'))
    .sign(SIGNING_KEY);
}

interface ReplicaOptions {
  /** What every peer says in `registered`; undefined: nothing, as an older server. */
  serverCount: number | undefined;
  /** Peer ids; default two replicas. */
  serverIds?: string[];
  /** Upstream index for the n-th connection through the balancer; default round robin. */
  pick?: (n: number) => number;
  argv?: string[];
  random?: () => number;
  agentOptions?: Partial<TunnelAgentOptions>;
}

async function setupReplicas(o: ReplicaOptions) {
  const token = await agentToken('u1');
  const peers: RawServer[] = [];
  // What every replica says in `registered` from now on; a test may lower it.
  const announced = { serverCount: o.serverCount };
  const serverIds = o.serverIds ?? ['peer-a', 'peer-b'];
  for (const serverId of serverIds) {
    peers.push(await RawServer.start(registeredAs(serverId, () => announced.serverCount)));
  }
  const lb = await startLoadBalancer(peers.map((p) => Number(new URL(p.url).port)));
  if (o.pick) lb.pick = o.pick;
  const echo = await echoTarget();
  const dir = tempDir();
  const argv = [
    ...['--server', `wss://127.0.0.1:${lb.port}/connect`, '--token-file', writeFile(dir, 'token', token)],
    // The peers share one certificate (tlsCredentials() is made once per process).
    ...['--ca-file', peers[0]!.caFile, '--server-name', 'localhost', '--agent-id', 'agent-test'],
    ...['--route', `apiserver=127.0.0.1:${echo.port}`, '--health-listen', 'off'],
    ...['--backoff-initial-ms', '10', '--backoff-max-ms', '50', '--healthy-reset-ms', '1s'],
    ...['--auth-retry-ms', '400', '--keepalive-interval-ms', '2s', '--drain-timeout-ms', '1s'],
    ...(o.argv ?? []),
  ];
  const config = resolveClientConfig({ argv, env: {}, cwd: dir, hostname: 'test-host' });
  const logs = captureLogs();
  const agent = new TunnelAgent(config, {
    logger: logs.logger,
    ...(o.random ? { random: o.random } : {}),
    ...o.agentOptions,
  });
  onTestFinished(async () => {
    agent.destroy();
    await agent.close();
  });
  const events = { registered: 0, disconnected: 0 };
  agent.on('registered', () => (events.registered += 1));
  agent.on('disconnected', () => (events.disconnected += 1));
  await agent.start();
  const servedBy = () => agent.servers.map((s) => s.serverId).sort();
  return { agent, peers, serverIds, announced, lb, logs, events, servedBy };
}

const live = (peer: RawServer) => peer.live();

const warnings = (lines: LogLine[]) => lines.filter((l) => l.level >= LEVEL.warn);

describe('TunnelAgent behind a load balancer', () => {
  test('holds one session to each replica the servers announce, and each replica can route to it', async () => {
    const { agent, peers, serverIds, logs, servedBy } = await setupReplicas({ serverCount: 2 });
    await pollUntil(() => agent.servers.length === 2, 5_000, 'a session to each replica');
    expect(servedBy()).toEqual(['peer-a', 'peer-b']);
    expect(agent.slotCount).toBe(2);
    expect(agent.isReady).toBe(true);
    for (const [i, peer] of peers.entries()) {
      expect(live(peer)).toHaveLength(1);
      const { stream, reply } = await live(peer)[0]!.openRoute('cluster-u1', Buffer.from(serverIds[i]!));
      expect(reply).toEqual({ ok: true });
      stream.end();
      expect((await readAll(stream)).toString()).toBe(`${serverIds[i]}<eof>`);
    }
    const registered = logs.find('agent registered');
    expect(registered.map((l) => [l.level, l.serverCount, l.slot, l.serverId])).toEqual([
      [LEVEL.info, 2, 0, 'peer-a'],
      [LEVEL.info, 2, 1, 'peer-b'],
    ]);
    expect(logs.find('server count changed')).toEqual([
      expect.objectContaining({ serverCount: 2, slots: 2, previousSlots: 1 }),
    ]);
    expect(warnings(logs.lines)).toEqual([]);
  });

  test('a session that lands on a replica it already holds is closed with GoAway and redialed soon, without growing the backoff', async () => {
    const { agent, peers, lb, logs, events, servedBy } = await setupReplicas({
      serverCount: 2,
      // Three connections in a row to peer-a: the second slot finds peer-b on its third dial.
      pick: (n) => (n < 3 ? 0 : 1),
      argv: ['--backoff-initial-ms', '200', '--backoff-max-ms', '10s'],
      random: () => 0.5,
    });
    await pollUntil(() => agent.servers.length === 2, 10_000, 'a session to each replica');
    expect(servedBy()).toEqual(['peer-a', 'peer-b']);
    expect(lb.routed).toHaveLength(4);
    const [a] = peers;
    await pollUntil(
      () => a!.sessions.filter((s) => s.goAwayReceived).length === 2,
      5_000,
      'GoAway on both duplicates',
    );
    await Promise.all(a!.sessions.filter((s) => s.goAwayReceived).map((s) => s.closed));
    expect(live(a!)).toHaveLength(1);
    // A burst: each redial within 20 ms (0.5 × 20), not the failure backoff (200 ms and doubling).
    const duplicates = logs.find('duplicate server session');
    expect(duplicates.map((l) => [l.level, l.slot, l.duplicates, l.delayMs])).toEqual([
      [LEVEL.debug, 1, 1, 10],
      [LEVEL.debug, 1, 2, 10],
    ]);
    // Neither an error nor a session of ours: no warning, no events, one 'agent registered' per replica.
    expect(warnings(logs.lines)).toEqual([]);
    expect(logs.find('agent registered').map((l) => l.serverId)).toEqual(['peer-a', 'peer-b']);
    expect(events).toEqual({ registered: 2, disconnected: 0 });
  });

  test('a missing replica is probed in rounds: 2 × serverCount quick dials, then a pause growing with the time missing; reported once (serverCount above the replicas)', async () => {
    const { agent, peers, logs, servedBy } = await setupReplicas({
      serverCount: 3,
      random: () => 0.99,
      agentOptions: { replicaProbeMs: 100, replicaProbeMaxMs: 300, replicaMissingWarnMs: 1_500 },
    });
    const reported = await pollUntil(
      () => logs.find('a server replica is missing: is serverCount above the replicas?')[0],
      10_000,
      'the missing replica reported',
    );
    expect(reported).toMatchObject({ level: LEVEL.warn, serverCount: 3 });
    const slot = reported.slot;
    // Rounds on that slot: 5 quick redials (0.99 × 20 ms), then the 6th duplicate pauses the round.
    const ofSlot = logs.lines.filter(
      (l) =>
        l.slot === slot && (l.msg === 'duplicate server session' || l.msg === 'server replica still missing'),
    );
    const rounds = ofSlot.filter((l) => l.msg === 'server replica still missing');
    expect(rounds.length).toBeGreaterThanOrEqual(3);
    for (const l of ofSlot.filter((x) => x.msg === 'duplicate server session')) expect(l.delayMs).toBe(19);
    expect(ofSlot.slice(0, 6).map((l) => l.msg)).toEqual([
      ...Array<string>(5).fill('duplicate server session'),
      'server replica still missing',
    ]);
    // The pause: about replicaProbeMs at first, growing with the time missing, never past the ceiling.
    const pauses = rounds.map((l) => l.delayMs as number);
    expect(pauses[0]).toBe(Math.floor(100 * 1.49));
    for (const [k, p] of pauses.entries()) {
      expect(p).toBeLessThanOrEqual(Math.floor(300 * 1.49));
      if (k > 0) expect(p).toBeGreaterThanOrEqual(pauses[k - 1]!);
    }
    // Bounded: at most 2 × serverCount dials per round, on every slot together.
    const dials = peers.reduce((n, p) => n + p.upgrades.length, 0);
    const allRounds = logs.find('server replica still missing').length;
    expect(dials).toBeLessThanOrEqual(2 + 6 * (allRounds + 3));
    expect(logs.find('a server replica is missing: is serverCount above the replicas?')).toHaveLength(1);
    expect(servedBy()).toEqual(['peer-a', 'peer-b']);
    expect(agent.slotCount).toBe(3);
    expect(agent.isReady).toBe(true);
  });

  test('a lower serverCount retires the extra slot once its session ends; no live session is closed for it', async () => {
    const { agent, peers, announced, lb, logs, servedBy } = await setupReplicas({ serverCount: 2 });
    await pollUntil(() => agent.servers.length === 2, 5_000, 'a session to each replica');
    const slotOf = (serverId: string) =>
      logs.find('agent registered').find((l) => l.serverId === serverId)?.slot as number;
    const [a, b] = peers as [RawServer, RawServer];
    announced.serverCount = 1;
    // peer-a drops slot 0's session; it comes back to peer-a and learns the count is now 1.
    expect(slotOf('peer-a')).toBe(0);
    lb.pick = () => 0;
    live(a)[0]!.socket.destroy();
    await pollUntil(
      () => logs.find('server count changed').find((l) => l.serverCount === 1),
      5_000,
      'the lower count to be adopted',
    );
    await pollUntil(() => live(a).length === 1 && agent.servers.length === 2, 5_000, 'slot 0 back on peer-a');
    // Slot 1 keeps its session to peer-b: a lower count closes nothing.
    expect(live(b)).toHaveLength(1);
    expect(agent.slotCount).toBe(2);
    expect(servedBy()).toEqual(['peer-a', 'peer-b']);
    // Once that session ends, slot 1 retires instead of dialing again.
    const dialsBefore = lb.routed.length;
    live(b)[0]!.socket.destroy();
    await pollUntil(() => agent.slotCount === 1, 5_000, 'slot 1 to retire');
    // A retired slot has no loop left to dial with: nothing more comes once queued work has run.
    await flushIo();
    expect(lb.routed.length).toBe(dialsBefore);
    expect(logs.find('connect slot retired')).toEqual([expect.objectContaining({ slot: 1 })]);
    expect(servedBy()).toEqual(['peer-a']);
    expect(agent.isReady).toBe(true);
  });

  test('close() right after start() dials nothing: the first dial, still reading the token file, does not begin', async () => {
    const { agent, lb } = await setupReplicas({ serverCount: 2 });
    // The slot is reading its token file now (async); close() comes before it has dialed.
    await agent.close();
    await flushIo();
    expect(lb.routed).toEqual([]);
  });

  test(`runs at most ${MAX_SLOTS} slots whatever the count, and close() ends every one: GoAway on each session, no dial after`, async () => {
    const { agent, peers, lb, logs } = await setupReplicas({
      serverCount: 64,
      argv: ['--backoff-initial-ms', '300', '--backoff-max-ms', '10s'],
    });
    await pollUntil(
      () => agent.servers.length === 2 && agent.slotCount === MAX_SLOTS,
      5_000,
      'all slots running',
    );
    expect(logs.find('server count changed')[0]).toMatchObject({ serverCount: 64, slots: MAX_SLOTS });
    await agent.close();
    expect(agent.slotCount).toBe(0);
    // Both serving sessions, and any duplicate caught mid-flight, left with GoAway and closed.
    const all = peers.flatMap((p) => p.sessions);
    await Promise.all(all.map((s) => s.closed));
    expect(all.filter((s) => !s.goAwayReceived)).toEqual([]);
    // No slot is left to dial: nothing more comes once queued work has run.
    const dialsAtClose = lb.routed.length;
    await flushIo();
    expect(lb.routed.length).toBe(dialsAtClose);
    expect(logs.find('agent stopped')).toHaveLength(1);
  });

  test('a server that announces no count (an older one) keeps the agent at one session', async () => {
    const { agent, lb, logs } = await setupReplicas({ serverCount: undefined });
    await pollUntil(() => agent.isReady, 5_000, 'the first session');
    // The count is read when `registered` is: a second slot would exist by now.
    await flushIo();
    expect(agent.slotCount).toBe(1);
    expect(lb.routed).toHaveLength(1);
    expect(logs.find('agent registered')[0]).toMatchObject({ serverId: 'peer-a', slot: 0 });
    expect(logs.find('agent registered')[0]?.serverCount).toBeUndefined();
  });
});

describe('the registered message', () => {
  const registered = (extra: Record<string, unknown>) =>
    Buffer.from(JSON.stringify({ type: 'registered', serverId: 's-1', hostnames: ['a.b'], ...extra }));

  test('carries serverCount, an integer from 1 to 64, or leaves it out', () => {
    expect(decodeControlMessage(registered({ serverCount: 3 }))).toMatchObject({ serverCount: 3 });
    expect(decodeControlMessage(registered({ serverCount: 64 }))).toMatchObject({ serverCount: 64 });
    expect(decodeControlMessage(registered({}))).not.toHaveProperty('serverCount');
    for (const serverCount of [0, 65, 1.5, '2', null, -1]) {
      expect(() => decodeControlMessage(registered({ serverCount })), String(serverCount)).toThrow(
        expect.objectContaining({ code: 'TUN_ERR_BAD_CONTROL_MESSAGE' }),
      );
    }
  });
});
