/**
 * An agent holding a valid token of one cluster, tried as an attacker would against a real
 * server process (docs/SECURITY.md, "an agent with a valid token"). Each flood runs in a process
 * of its own (test/helpers/attacker.mjs) while a bystander cluster is used with real kubectl:
 * the server's memory stays bounded, the attacker's sessions end with a coded reason, and the
 * bystander's kubectl latency (median of five) stays within twice its idle figure, and no
 * request stalls. The hostile project runs after the others, one file at a time (vitest.config.ts).
 */
import { createPrivateKey } from 'node:crypto';
import { appendFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SignJWT, decodeJwt } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { setupClusterTunnel } from '../helpers/cluster-tunnel.js';
import {
  dialRaw,
  frames,
  registerRaw,
  startAttacker,
  underAttack,
  latencyBoundMs,
} from '../helpers/hostile.js';
import { findKubectl } from '../helpers/kubectl.js';
import { withDeadline } from '../helpers/streams.js';
import {
  createToken,
  startAgent,
  startServer,
  writeTokenFile,
  type ServerHandle,
} from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';
import { keyIdOf } from '../../packages/server/src/token-format.js';

const MiB = 1024 * 1024;

beforeAll(() => {
  findKubectl();
});

/** What the server logged about the attacker's sessions: every code it ended or refused them with. */
function codesFor(server: ServerHandle, clusterId: string): string[] {
  return server.proc.logs
    .filter((l) => l.clusterId === clusterId && typeof l.code === 'string')
    .map((l) => l.code as string);
}

describe('a flooding agent costs its own sessions, not the server or other clusters', () => {
  it.each([
    // [attack, a code the server ends or refuses the attacker's sessions with]
    ['yamux-ping-flood', 'TUN_ERR_LIMIT_EXCEEDED'],
    ['ws-ping-flood', 'TUN_ERR_LIMIT_EXCEEDED'],
    ['syn-flood', 'TUN_ERR_LIMIT_EXCEEDED'],
    ['empty-frames', 'TUN_ERR_LIMIT_EXCEEDED'],
    ['prereg-tiny-frames', 'TUN_ERR_BAD_CONTROL_MESSAGE'],
    ['control-junk', 'TUN_ERR_BAD_CONTROL_MESSAGE'],
  ])(
    '%s: memory bounded, the session ended with %s, kubectl to another cluster within 2× idle (+250 ms floor)',
    async (kind, code) => {
      const good = await setupClusterTunnel({ uid: 'good' });
      const { server } = good;
      const evil = await createToken(server.dataDir, 'evil');
      const effect = await underAttack(
        server,
        good.kubeconfig,
        () => startAttacker(server, kind, { token: evil }),
        () => codesFor(server, 'evil').length > 0,
        kind,
      );
      expect(effect.rssGrowthBytes).toBeLessThan(96 * MiB);
      expect(codesFor(server, 'evil')).toContain(code);
      expect(effect.attack.medianMs).toBeLessThanOrEqual(latencyBoundMs(effect.idle));
      // No request waits behind the attack (a refused connection retried, a stalled handshake).
      expect(effect.attack.maxMs).toBeLessThan(2_000);
      expect(server.proc.child.exitCode).toBeNull();
    },
  );
});

describe('protocol violations', () => {
  it.each([
    [
      'a frame of yamux version 1',
      () => Buffer.from([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
      'TUN_ERR_BAD_VERSION',
    ],
    ['a Data frame on stream 0', () => frames.data(0, Buffer.from('x')), 'TUN_ERR_BAD_STREAM_ID'],
    [
      'a Data frame past the window',
      () => frames.data(1, Buffer.alloc(300 * 1024)),
      'TUN_ERR_WINDOW_EXCEEDED',
    ],
  ])(
    '%s ends that session with its code; the server and another agent carry on',
    async (_what, frame, code) => {
      const server = await startServer();
      const other = await registerRaw(server, await createToken(server.dataDir, 'u2'), ['cluster-u2']);
      const { ws } = await registerRaw(server, await createToken(server.dataDir, 'u1'), ['cluster-u1']);
      ws.write(frame());
      const line = await server.proc.waitForLog(
        (l) => l.msg === 'agent disconnected' && l.clusterId === 'u1',
      );
      expect(line.code).toBe(code);
      // The other agent's session is untouched: it still answers a ping.
      expect(
        await withDeadline(other.session.ping(), 5_000, 'a ping on the other session'),
      ).toBeGreaterThanOrEqual(0);
      expect(server.proc.child.exitCode).toBeNull();
    },
  );
});

describe('a session lives only as long as its token', () => {
  it('ends a live session at the token expiry: the agent hears TUN_ERR_TOKEN_EXPIRED, then its redial is refused', async () => {
    const server = await startServer({ args: ['--token-clock-tolerance-ms', '0'] });
    const dir = tempDir();
    const tokenFile = await writeTokenFile(dir, await createToken(server.dataDir, 'u1', '3s'));
    const agent = await startAgent({ server, tokenFile, routes: ['apiserver=127.0.0.1:1'] });
    const ended = await server.proc.waitForLog((l) => l.msg === 'agent session ended', 10_000);
    expect(ended.code).toBe('TUN_ERR_TOKEN_EXPIRED');
    const heard = await agent.waitForLog((l) => l.msg === 'server ended the session', 5_000);
    expect(heard.code).toBe('TUN_ERR_TOKEN_EXPIRED');
    const refused = await server.proc.waitForLog(
      (l) => l.msg === 'agent refused' && l.code === 'TUN_ERR_TOKEN_EXPIRED',
      10_000,
    );
    expect(refused.code).toBe('TUN_ERR_TOKEN_EXPIRED');
  });

  it('ends a live session within a second of its token id appearing in the revocation file', async () => {
    const dir = tempDir();
    const revokedFile = join(dir, 'revoked');
    await writeFile(revokedFile, '# revoked token ids\n');
    const server = await startServer({ args: ['--revoked-file', revokedFile] });
    const token = await createToken(server.dataDir, 'u1');
    const agent = await startAgent({
      server,
      tokenFile: await writeTokenFile(dir, token),
      routes: ['apiserver=127.0.0.1:1'],
    });
    const revokedAt = Date.now();
    await appendFile(revokedFile, `${decodeJwt(token).jti}\n`);
    const ended = await server.proc.waitForLog((l) => l.msg === 'agent session ended', 5_000);
    expect(ended.code).toBe('TUN_ERR_TOKEN_REVOKED');
    expect(Date.parse(ended.time as string) - revokedAt).toBeLessThan(1_000);
    const heard = await agent.waitForLog((l) => l.msg === 'server ended the session', 5_000);
    expect(heard.code).toBe('TUN_ERR_TOKEN_REVOKED');
  });
});

describe('tokens that held up when tried (kept held)', () => {
  it.each([
    ['an audience of another deployment', { aud: 'other.example.com' }, 'TUN_ERR_TOKEN_INVALID'],
    ['no audience', { aud: undefined }, 'TUN_ERR_TOKEN_INVALID'],
    ['an iat an hour in the future', { iatOffsetS: 3600 }, 'TUN_ERR_TOKEN_INVALID'],
    ['a lifetime one second over the server cap', { lifetimeS: 2 * 3600 + 1 }, 'TUN_ERR_TOKEN_INVALID'],
    ['exp a minute ago', { iatOffsetS: -600, lifetimeS: 540 }, 'TUN_ERR_TOKEN_EXPIRED'],
    ['a cluster claim that is no cluster id', { cluster: 'Evil-Cluster' }, 'TUN_ERR_TOKEN_INVALID'],
    ['a subject of another cluster', { sub: 'cluster:victim' }, 'TUN_ERR_TOKEN_INVALID'],
  ])('refuses a token signed with the real key but with %s', async (_what, claims, code) => {
    const server = await startServer({
      args: ['--max-token-lifetime-ms', '2h', '--token-clock-tolerance-ms', '60s'],
    });
    const token = await forge(server, claims);
    await expect(dialRaw(server, token)).rejects.toMatchObject({ code });
  });

  it("refuses 'alg: none' and an HS256 token keyed with the server's public key", async () => {
    const server = await startServer();
    const genuine = decodeJwt(await createToken(server.dataDir, 'u1'));
    const b64 = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
    const none = `${b64({ alg: 'none', typ: 'JWT' })}.${b64(genuine)}.`;
    await expect(dialRaw(server, none)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID' });
    const publicPem = await readFile(join(server.dataDir, 'token-signing.pub'));
    const hs = await new SignJWT(genuine)
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .sign(new Uint8Array(publicPem));
    await expect(dialRaw(server, hs)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID' });
  });

  it('refuses one cluster more sessions than maxAgentsPerCluster with 429, other clusters unaffected', async () => {
    const server = await startServer({ args: ['--max-agents-per-cluster', '2'] });
    const u1 = await createToken(server.dataDir, 'u1');
    await registerRaw(server, u1, ['cluster-u1']);
    await registerRaw(server, u1, ['cluster-u1']);
    // The agent's dialer reports statuses other than 401/403 as retryable transport failures,
    // with the server's code beside the status.
    await expect(dialRaw(server, u1)).rejects.toMatchObject({
      code: 'TUN_ERR_TRANSPORT_CLOSED',
      details: expect.objectContaining({ status: 429, serverCode: 'TUN_ERR_LIMIT_EXCEEDED' }),
    });
    const u2 = await createToken(server.dataDir, 'u2');
    const other = await registerRaw(server, u2, ['cluster-u2']);
    expect(other.registered.type).toBe('registered');
  });

  it('refuses an agent id outside the id alphabet (it travels into logs and metrics)', async () => {
    const server = await startServer();
    const ws = await dialRaw(server, await createToken(server.dataDir, 'u1'));
    ws.resume(); // read (and drop) what the server says, so its closing is seen
    const closed = new Promise((r) => ws.once('close', r));
    ws.write(frames.register(['cluster-u1'], 'bad\nid"}'));
    const line = await server.proc.waitForLog((l) => l.msg === 'agent registration failed', 10_000);
    expect(line.code).toBe('TUN_ERR_BAD_CONTROL_MESSAGE');
    expect(line.err).toMatch(/agentId must match/);
    await withDeadline(closed, 10_000, 'the session to end');
  });
});

interface ForgedClaims {
  aud?: string | undefined;
  iatOffsetS?: number;
  lifetimeS?: number;
  cluster?: string;
  sub?: string;
}

/** A token signed with the server's real key, with the claims a test bends. */
async function forge(server: ServerHandle, c: ForgedClaims): Promise<string> {
  const key = createPrivateKey(await readFile(join(server.dataDir, 'token-signing.key'), 'utf8'));
  const now = Math.floor(Date.now() / 1000);
  const iat = now + (c.iatOffsetS ?? 0);
  const cluster = c.cluster ?? 'u1';
  const payload: Record<string, unknown> = { cluster };
  if (!('aud' in c) || c.aud !== undefined) payload.aud = 'aud' in c ? c.aud : 'proxy.localhost';
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'EdDSA', kid: keyIdOf(key), typ: 'JWT' })
    .setIssuer('cluster-tunnel')
    .setSubject(c.sub ?? `cluster:${cluster}`)
    .setJti(`forged-${Math.random().toString(36).slice(2)}`)
    .setIssuedAt(iat)
    .setExpirationTime(iat + (c.lifetimeS ?? 3600))
    .sign(key);
}
