/**
 * The tunnel-server command line in-process (runCli with injected argv, env, output streams and
 * a shutdown signal): usage and configuration errors exit 2 with every problem printed, `token
 * create` mints a token the server accepts, and `start` runs until the shutdown signal, then
 * drains and exits 0.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it, onTestFinished } from 'vitest';
import { EXIT_OK, EXIT_USAGE, TokenVerifier, runCli, type TunnelServer } from '@cluster-tunnel/server';
import { withDeadline } from '../helpers/streams.js';
import { tempDir } from '../helpers/temp-dir.js';
import { LinkVerifier } from '../../packages/server/src/http-link.js';

function capture(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

async function run(
  argv: string[],
  dir: string,
  shutdown = new AbortController().signal,
  onStarted: (server: TunnelServer) => void = () => undefined,
) {
  const stdout = capture();
  const stderr = capture();
  const logs = capture();
  let started: TunnelServer | undefined;
  const code = await runCli({
    argv,
    env: {},
    cwd: dir,
    stdout: stdout.stream,
    stderr: stderr.stream,
    shutdown,
    logDestination: logs.stream,
    onStarted: (server) => {
      started = server;
      onStarted(server);
    },
  });
  return { code, stdout: stdout.text(), stderr: stderr.text(), logs: logs.text(), started };
}

describe('tunnel-server (in-process)', () => {
  it('prints its help and version, exit 0', async () => {
    const dir = tempDir('tunnel-server-cli-');
    const help = await run(['--help'], dir);
    expect(help.code).toBe(EXIT_OK);
    expect(help.stdout).toMatch(/Usage: tunnel-server/);
    expect(help.stdout).toMatch(/token/);
    const version = await run(['--version'], dir);
    expect(version).toMatchObject({ code: EXIT_OK, stdout: '0.1.0\n' });
  });

  it('reports every configuration problem at once and exits 2', async () => {
    const dir = tempDir('tunnel-server-cli-');
    const result = await run(['start', '--listen', 'nowhere', '--server-count', '0', '--check-config'], dir);
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.stderr).toMatch(/2 configuration problems/);
    expect(result.stderr).toMatch(/listen \(flag --listen\)/);
    expect(result.stderr).toMatch(/serverCount \(flag --server-count\)/);
  });

  it('an unknown flag is a usage error, exit 2', async () => {
    const result = await run(['start', '--no-such-flag'], tempDir('tunnel-server-cli-'));
    expect(result.code).toBe(EXIT_USAGE);
    expect(result.stderr).toMatch(/unknown option '--no-such-flag'/);
  });

  it('token create signs with the data directory key, which start then verifies', async () => {
    const dir = tempDir('tunnel-server-cli-');
    const created = await run(['token', 'create', '--cluster', 'u1', '--ttl', '1h'], dir);
    expect(created.code).toBe(EXIT_OK);
    const token = created.stdout.trim();
    const publicKeyPem = await readFile(join(dir, '.tunnel', 'token-signing.pub'), 'utf8');
    const verifier = new TokenVerifier({
      publicKeyPems: [publicKeyPem],
      audience: 'proxy.localhost',
      maxLifetimeMs: 3_600_000 * 2,
      clockToleranceMs: 0,
    });
    onTestFinished(() => verifier.close());
    expect(await verifier.verify(token)).toMatchObject({ clusterId: 'u1' });
  });

  it('link create prints the link, and its id (for the revocation file) apart on stderr', async () => {
    const dir = tempDir('tunnel-server-cli-');
    const argv = [
      'link',
      'create',
      '--cluster',
      'u1',
      '--route',
      'dash',
      '--user',
      'alice',
      '--port',
      '8443',
    ];
    const created = await run(argv, dir);
    expect(created.code).toBe(EXIT_OK);
    const url = new URL(created.stdout.trim());
    expect(url.origin).toBe('https://cluster-u1-dash.proxy.localhost:8443');
    expect(url.pathname).toBe('/.tunnel/login');
    const publicKeyPem = await readFile(join(dir, '.tunnel', 'token-signing.pub'), 'utf8');
    const session = await new LinkVerifier([publicKeyPem]).verify(
      url.searchParams.get('token')!,
      'cluster-u1-dash.proxy.localhost',
      true,
    );
    expect(session.user).toBe('alice');
    expect(created.stderr).toBe(
      `link id ${session.id} (for alice): add it to the server's revokedFile to end the link and its session\n`,
    );
  });

  it('start listens until the shutdown signal, then drains and exits 0', async () => {
    const dir = tempDir('tunnel-server-cli-');
    const shutdown = new AbortController();
    let onStarted: (server: TunnelServer) => void = () => undefined;
    const listening = new Promise<TunnelServer>((resolve) => {
      onStarted = resolve;
    });
    const running = run(
      ['start', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--print-next-steps'],
      dir,
      shutdown.signal,
      onStarted,
    );
    const server = await withDeadline(listening, 10_000, 'the server to listen');
    expect(server.address.port).toBeGreaterThan(0);
    shutdown.abort('SIGTERM');
    const result = await withDeadline(running, 10_000, 'runCli to return');
    expect(result.code).toBe(EXIT_OK);
    expect(result.started).toBe(server);
    expect(result.stderr).toMatch(/npx tunnel-client --server wss:\/\/127\.0\.0\.1:\d+\/connect/);
    const messages = result.logs
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
    expect(messages).toEqual(expect.arrayContaining(['tunnel server listening', 'draining', 'stopped']));
  });

  it('kubeconfig --mode agent-tls trusts the route CA of the data directory; bad combinations exit 2 with the reason', async () => {
    const dir = tempDir('tunnel-server-cli-');
    const made = await run(['route-ca', 'create', '--data-dir', 'data'], dir);
    expect(made.code).toBe(EXIT_OK);
    expect(made.stderr).toMatch(/kubectl -n tunnel-server create secret tls tunnel-server-route-ca/);
    const ok = await run(
      ['kubeconfig', '--cluster', 'u1', '--mode', 'agent-tls', '--data-dir', 'data', '--token', 'tok'],
      dir,
    );
    expect(ok.code).toBe(EXIT_OK);
    const routeCa = await readFile(join(dir, 'data', 'route-ca.crt'), 'utf8');
    expect(ok.stdout).toContain(`certificate-authority-data: ${Buffer.from(routeCa).toString('base64')}`);
    expect(ok.stdout).toContain('server: https://cluster-u1.proxy.localhost:8443');
    expect(ok.stdout).toMatch(/token: tok/);

    const refused = async (argv: string[]) => {
      const r = await run(['kubeconfig', '--cluster', 'u1', ...argv], dir);
      expect(r.code).toBe(EXIT_USAGE);
      return r.stderr;
    };
    expect(await refused(['--mode', 'agent-tls', '--data-dir', 'nowhere'])).toMatch(
      /no route CA at .*nowhere\/route-ca.crt \(ENOENT\): give --data-dir of a server that made one, or --ca-file/,
    );
    expect(await refused(['--token', 'tok'])).toMatch(
      /--ca-file: the API server's CA is required in passthrough mode/,
    );
    expect(await refused(['--mode', 'tls', '--data-dir', 'data'])).toMatch(
      /--mode: "tls" is not passthrough or agent-tls/,
    );
    expect(await refused(['--mode', 'agent-tls', '--data-dir', 'data', '--exec-arg', 'x'])).toMatch(
      /--exec-arg needs --exec-command/,
    );
    expect(
      await refused([
        '--mode',
        'agent-tls',
        '--data-dir',
        'data',
        '--token',
        't',
        '--exec-command',
        'oidc-login',
      ]),
    ).toMatch(/give one of a client certificate, a token or an exec command/);
  });
});
