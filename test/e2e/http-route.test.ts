/**
 * A dashboard through an http route, driven as a person would, with real processes: the server,
 * an agent whose route is `dash=http://…`, a link from `tunnel-server link create`, and curl
 * following it with a cookie jar. Without the link: 401 on a page and on a WebSocket upgrade.
 * Basic access with an htpasswd file written by Apache's own `htpasswd -B`.
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createLink as signLink } from '@cluster-tunnel/server';
import { DASHBOARD_QUIET_MS, startDashboard } from '../helpers/dashboard.js';
import { createTestCa } from '../helpers/pki.js';
import {
  createLink,
  createToken,
  startAgent,
  startServer,
  startServerAndAgent,
  writeTokenFile,
} from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';

const execFileAsync = promisify(execFile);

/** curl's exit code and output; a failed transfer's reason (stderr) ends stdout, so assertions show it. */
async function curl(args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await execFileAsync('curl', ['-sS', '--max-time', '10', ...args]);
    return { code: 0, stdout };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: `${e.stdout}${e.stderr ? `\n[curl: ${e.stderr.trim()}]` : ''}` };
  }
}

async function dashboard(): Promise<number> {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' }).end(`dashboard saw ${req.url}`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => {
    server.closeAllConnections();
    server.close();
  });
  return (server.address() as AddressInfo).port;
}

/** curl's arguments for a route hostname of `server`: resolved to 127.0.0.1, the server's CA, status last. */
function curlBase(server: { port: number; caFile: string }, host: string): string[] {
  return [
    '--resolve',
    `${host}:${server.port}:127.0.0.1`,
    '--cacert',
    server.caFile,
    '-o',
    '-',
    '-w',
    '\n%{http_code}',
  ];
}

describe('a dashboard behind an http route', () => {
  it('is closed without a link, and open in the session a link starts', async () => {
    const server = await startServerAndAgent('u1', [`dash=http://127.0.0.1:${await dashboard()}`]);
    const host = 'cluster-u1-dash.proxy.localhost';
    const base = curlBase(server, host);
    const page = await curl([...base, `https://${host}:${server.port}/ui`]);
    expect(page.stdout.split('\n').at(-1)).toBe('401');
    expect(page.stdout).toContain('TUN_ERR_ACCESS_DENIED');
    const upgrade = await curl([
      ...base,
      '-H',
      'Connection: Upgrade',
      '-H',
      'Upgrade: websocket',
      '-H',
      'Sec-WebSocket-Version: 13',
      '-H',
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
      `https://${host}:${server.port}/console`,
    ]);
    expect(upgrade.stdout.split('\n').at(-1)).toBe('401');

    const link = await createLink(server, 'u1', 'dash', 'alice');
    expect(link).toMatch(new RegExp(`^https://${host}:${server.port}/\\.tunnel/login\\?token=`));
    const jar = join(tempDir(), 'cookies.txt');
    const opened = await curl([...base, '-L', '-c', jar, '-b', jar, link]);
    expect(opened.stdout).toBe('dashboard saw /\n200');
    const again = await curl([...base, '-b', jar, `https://${host}:${server.port}/ui`]);
    expect(again.stdout).toBe('dashboard saw /ui\n200');
    const line = await server.proc.waitForLog(
      (l) => l.msg === 'http request' && l.path === '/ui' && l.status === 200,
    );
    expect(line).toMatchObject({
      route: 'cluster-u1-dash',
      user: 'alice',
      method: 'GET',
      bytesIn: 0,
      bytesOut: 'dashboard saw /ui'.length,
    });
  });

  it('with basic access, lets in the users of an htpasswd file (htpasswd -B) and no one else', async () => {
    const dir = tempDir();
    const file = join(dir, 'htpasswd');
    execFileSync('htpasswd', ['-cbB', '-C', '5', file, 'alice', 'correct horse'], { stdio: 'ignore' });
    execFileSync('htpasswd', ['-bB', '-C', '5', file, 'bob', 'battery staple'], { stdio: 'ignore' });
    const server = await startServerAndAgent(
      'u1',
      [`dash=http://127.0.0.1:${await dashboard()}`, `docs=http://127.0.0.1:${await dashboard()}`],
      ['--http-route-access', `cluster-u1-dash=basic:${file}`],
    );
    const host = 'cluster-u1-dash.proxy.localhost';
    const url = `https://${host}:${server.port}/ui`;
    const base = curlBase(server, host);

    const anonymous = await curl([...base, '-D', '-', url]);
    expect(anonymous.stdout.split('\n').at(-1)).toBe('401');
    expect(anonymous.stdout).toMatch(/www-authenticate: Basic realm="cluster-u1-dash.proxy.localhost"/i);
    const wrong = await curl([...base, '-u', 'alice:battery staple', url]);
    expect(wrong.stdout.split('\n').at(-1)).toBe('401');
    expect(wrong.stdout).toContain('TUN_ERR_ACCESS_DENIED');
    const stranger = await curl([...base, '-u', 'mallory:correct horse', url]);
    expect(stranger.stdout.split('\n').at(-1)).toBe('401');
    expect((await curl([...base, '-u', 'alice:correct horse', url])).stdout).toBe('dashboard saw /ui\n200');
    expect((await curl([...base, '-u', 'bob:battery staple', url])).stdout).toBe('dashboard saw /ui\n200');
    const line = await server.proc.waitForLog((l) => l.msg === 'http request' && l.user === 'bob');
    expect(line).toMatchObject({ route: 'cluster-u1-dash', status: 200, path: '/ui' });

    // Removing a user takes effect without a restart.
    writeFileSync(
      file,
      execFileSync('htpasswd', ['-nbB', '-C', '5', 'alice', 'correct horse'], {
        stdio: ['ignore', 'pipe', 'ignore'],
      }),
    );
    await expect
      .poll(async () => (await curl([...base, '-u', 'bob:battery staple', url])).stdout.split('\n').at(-1), {
        timeout: 10_000,
        interval: 500,
      })
      .toBe('401');
    expect(await server.proc.waitForLog((l) => l.msg === 'htpasswd file reloaded')).toMatchObject({
      file,
      users: 1,
    });
    expect((await curl([...base, '-u', 'alice:correct horse', url])).stdout).toBe('dashboard saw /ui\n200');

    // The other route keeps the default: a password is no way in there.
    const docs = 'cluster-u1-docs.proxy.localhost';
    const other = await curl([
      ...curlBase(server, docs),
      '-u',
      'alice:correct horse',
      `https://${docs}:${server.port}/`,
    ]);
    expect(other.stdout.split('\n').at(-1)).toBe('401');
    expect(other.stdout).toContain('no session');
  });

  it('verifies an https dashboard with ca=, refuses one the CA does not vouch for, keeps sessions to their route and streams through silence', async () => {
    const dir = tempDir();
    const ca = await createTestCa('dashboard CA');
    const other = await createTestCa('someone else');
    const caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, ca.certPem);
    const good = await ca.issue({ commonName: 'dash.svc', dnsNames: ['dash.svc'] });
    const forged = await other.issue({ commonName: 'dash.svc', dnsNames: ['dash.svc'] });
    const server = await startServer({ args: ['--http-response-timeout-ms', '500ms'] });
    const agent = await startAgent({
      server,
      tokenFile: await writeTokenFile(dir, await createToken(server.dataDir, 'u1')),
      agentId: 'agent-u1',
      routes: [
        `dash=https://127.0.0.1:${await startDashboard('verified', { key: good.keyPem, cert: good.certPem })},ca=${caFile},serverName=dash.svc`,
        `fake=https://127.0.0.1:${await startDashboard('forged', { key: forged.keyPem, cert: forged.certPem })},ca=${caFile},serverName=dash.svc`,
      ],
    });
    const dash = 'cluster-u1-dash.proxy.localhost';
    const fake = 'cluster-u1-fake.proxy.localhost';
    const jar = join(dir, 'cookies.txt');
    const opened = await curl([
      ...curlBase(server, dash),
      '-L',
      '-c',
      jar,
      '-b',
      jar,
      await createLink(server, 'u1', 'dash', 'alice'),
    ]);
    expect(opened.stdout).toBe('verified\n200');

    // The same cookie on the other route is no session there.
    const jarFake = join(dir, 'fake-cookies.txt');
    const cookie = /tunnel_session\t(\S+)/.exec(readFileSync(jar, 'utf8'))![1]!;
    const elsewhere = await curl([
      ...curlBase(server, fake),
      '-b',
      `tunnel_session=${cookie}`,
      `https://${fake}:${server.port}/`,
    ]);
    expect(elsewhere.stdout.split('\n').at(-1)).toBe('401');
    expect(elsewhere.stdout).toContain('link is for another hostname');

    // An expired link opens nothing.
    const privateKeyPem = readFileSync(join(server.dataDir, 'token-signing.key'), 'utf8');
    const stale = await signLink({
      privateKeyPem,
      hostname: fake,
      user: 'alice',
      ttlMs: 60_000,
      sessionTtlMs: 8 * 3_600_000,
      now: () => Date.now() - 120_000,
    });
    const expired = await curl([
      ...curlBase(server, fake),
      `https://${fake}:${server.port}/.tunnel/login?token=${stale}`,
    ]);
    expect(expired.stdout.split('\n').at(-1)).toBe('401');
    expect(expired.stdout).toContain('link expired');

    // A dashboard whose certificate the route's CA did not sign: 502 with the code, never its page.
    await curl([
      ...curlBase(server, fake),
      '-L',
      '-c',
      jarFake,
      '-b',
      jarFake,
      await createLink(server, 'u1', 'fake', 'alice'),
    ]);
    const refused = await curl([...curlBase(server, fake), '-b', jarFake, `https://${fake}:${server.port}/`]);
    expect(refused.stdout.split('\n').at(-1)).toBe('502');
    expect(refused.stdout).toContain('TUN_ERR_DIAL_FAILED');
    expect(refused.stdout).not.toContain('forged');

    // Silence longer than the response timeout, once the response has started, ends nothing.
    const started = performance.now();
    const quiet = await curl([
      ...curlBase(server, dash),
      '-N',
      '-b',
      jar,
      `https://${dash}:${server.port}/sse-quiet`,
    ]);
    expect(quiet.stdout).toBe('data: first\n\ndata: last\n\n\n200');
    expect(performance.now() - started).toBeGreaterThanOrEqual(DASHBOARD_QUIET_MS);
    // Every closed user connection reset its stream to the https dashboard: the agent lives on.
    expect(agent.child.exitCode).toBeNull();
  });
});
