/**
 * A hostile server in front of a real agent process (docs/SECURITY.md, "a hostile server"):
 * the agent forwards only to its configured targets, refuses crafted stream headers one stream
 * at a time, ends a session whose server breaks the control protocol or floods it, and dials
 * again. The server is test/helpers/raw-server.ts, scripted, speaking the real protocol over
 * TLS and WebSocket; the agent is `tunnel-client`.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { Flag, FrameType, encodeHeader, readStreamReply } from '@cluster-tunnel/protocol';
import { RawServer, type RawServerSession } from '../helpers/raw-server.js';
import { closed as streamClosed, echoTarget } from '../client/fixtures.js';
import { pollUntil, withDeadline } from '../helpers/streams.js';
import { startAgent, writeTokenFile, type CliProcess, type ServerHandle } from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';

const MiB = 1024 * 1024;

async function agentBehindHostileServer(): Promise<{
  peer: RawServer;
  agent: CliProcess;
  session: RawServerSession;
  echoPort: number;
}> {
  // The agent reads only the token's cluster claim; the scripted server checks none.
  const token = await new SignJWT({ cluster: 'u1' })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject('cluster:u1')
    .setJti(randomBytes(8).toString('hex'))
    .sign(new TextEncoder().encode('hostile-server-tests-key-hostile-server'));
  const peer = await RawServer.start();
  const echo = await echoTarget();
  const dir = await tempDir();
  const server = { url: peer.url, caFile: peer.caFile } as ServerHandle;
  const agent = await startAgent({
    server,
    tokenFile: await writeTokenFile(dir, token),
    routes: [`apiserver=127.0.0.1:${echo.port}`],
    args: ['--server-name', 'localhost'],
  });
  return { peer, agent, session: await peer.nextSession(), echoPort: echo.port };
}

/** Opens a stream and writes `bytes` raw (no well-formed header unless the bytes are one). */
function rawStream(session: RawServerSession, bytes: Buffer) {
  const stream = session.session.open();
  stream.on('error', () => undefined);
  stream.write(bytes);
  return stream;
}

function agentRssBytes(agent: CliProcess): number {
  const status = readFileSync(`/proc/${agent.child.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
}

describe('a hostile server in front of a real agent', () => {
  it('refuses crafted stream headers one stream at a time and keeps the session: a good stream still works', async () => {
    const { agent, session } = await agentBehindHostileServer();
    const label = (s: string): Buffer => Buffer.concat([Buffer.from([s.length]), Buffer.from(s)]);
    const header = (version: number, route: string, rest: Buffer = Buffer.from([0])): Buffer =>
      Buffer.concat([Buffer.from([version]), label(route), rest]);

    // Each is refused with a reply, or reset: never forwarded, never fatal to the session.
    const refusedByReply = [
      header(1, 'cluster-u1-nope'), // a route the agent does not serve
      header(1, 'x'.repeat(255)), // the longest label: not served either
      header(1, 'cluster-u2'), // another cluster's apiserver
      Buffer.concat([header(1, 'cluster-u1-x'), randomBytes(64 * 1024)]), // with user bytes behind
    ];
    for (const bytes of refusedByReply) {
      const reply = await readStreamReply(rawStream(session, bytes), 5_000);
      expect(reply).toMatchObject({ ok: false, code: 'TUN_ERR_UNKNOWN_ROUTE' });
    }
    const resetOutright = [
      header(3, 'cluster-u1'), // an unknown header version (1 and 2 are known)
      Buffer.from([1, 0]), // an empty label
    ];
    for (const bytes of resetOutright) {
      const stream = rawStream(session, bytes);
      await withDeadline(streamClosed(stream), 5_000, 'the agent to reset the stream');
      expect(stream.resetReason?.code).toBe('TUN_ERR_STREAM_RESET');
    }

    // The session is intact: a good stream reaches the echo target.
    const { stream, reply } = await session.openRoute('cluster-u1', Buffer.from('ping'));
    expect(reply).toEqual({ ok: true });
    // readStreamReply leaves the stream paused: a 'data' listener alone does not restart it.
    const echoed = await withDeadline(
      new Promise<string>((resolve) => stream.once('data', (d: Buffer) => resolve(d.toString())).resume()),
      5_000,
      'the echo',
    );
    expect(echoed).toBe('ping');
    expect(agent.logs.filter((l) => l.msg === 'agent registered')).toHaveLength(1);
    expect(agent.logs.filter((l) => l.msg === 'bad stream header')).toHaveLength(2);
    expect(agent.logs.filter((l) => l.msg === 'route not configured')).toHaveLength(4);
  });

  it('ends the session when the server says anything but error after registered, and dials again', async () => {
    const { peer, agent, session } = await agentBehindHostileServer();
    session.control.send({ type: 'registered', serverId: 'raw-1', hostnames: [] });
    const line = await agent.waitForLog((l) => l.msg === 'unexpected control message', 5_000);
    expect(line.code).toBe('TUN_ERR_BAD_CONTROL_MESSAGE');
    await withDeadline(session.closed, 5_000, 'the session to end');
    const again = await peer.nextSession(10_000);
    expect(again.register.type).toBe('register');
  });

  it('ends a session flooded with pings at the yamux and the WebSocket layer, memory bounded, and dials again', async () => {
    const { peer, agent, session } = await agentBehindHostileServer();
    const before = agentRssBytes(agent);
    // yamux pings, far over pingsPerSecond: the agent ends the session with the limit's code.
    const pings = Buffer.concat(
      Array.from({ length: 4096 }, (_, i) => encodeHeader(FrameType.Ping, Flag.SYN, 0, i)),
    );
    for (let i = 0; i < 64 && !session.session.isClosed; i++) session.socket.write(wsFrame(pings));
    await withDeadline(session.closed, 10_000, 'the agent to end the flooded session');
    const ended = await agent.waitForLog((l) => l.msg === 'session ended', 10_000);
    expect(ended.err).toMatchObject({ code: 'TUN_ERR_LIMIT_EXCEEDED', details: { limit: 'pingsPerSecond' } });

    // WebSocket pings on the next session: answered at most one at a time, then refused.
    const next = await peer.nextSession(10_000);
    const wsPing = Buffer.concat(
      Array.from({ length: 512 }, () => Buffer.from([0x89, 125, ...randomBytes(125)])),
    );
    for (let i = 0; i < 2_000 && !next.session.isClosed; i++) next.socket.write(wsPing);
    await withDeadline(next.closed, 10_000, 'the agent to end the WebSocket-flooded session');
    // Whether the agent had seen `registered` yet decides which line reports it.
    const wsEnded = await agent.waitForLog(
      (l) =>
        (l.msg === 'session ended' || l.msg === 'registration failed') &&
        (l.err as { details?: { limit?: string } } | undefined)?.details?.limit === 'webSocketPingsPerSecond',
      10_000,
    );
    expect(wsEnded.err).toMatchObject({ code: 'TUN_ERR_LIMIT_EXCEEDED' });
    expect(agentRssBytes(agent) - before).toBeLessThan(64 * MiB);
    await pollUntil(() => peer.sessions.length >= 3, 10_000, 'the agent to dial a third time');
  });
});

/** An unmasked binary WebSocket frame (server to client) carrying `payload`. */
function wsFrame(payload: Buffer): Buffer {
  const head =
    payload.length < 126
      ? Buffer.from([0x82, payload.length])
      : payload.length < 65536
        ? Buffer.from([0x82, 126, payload.length >> 8, payload.length & 0xff])
        : (() => {
            const b = Buffer.alloc(10);
            b[0] = 0x82;
            b[1] = 127;
            b.writeBigUInt64BE(BigInt(payload.length), 2);
            return b;
          })();
  return Buffer.concat([head, payload]);
}
