// The tunnel-client command line: --check-config, --version, exit codes, and a full run that
// drains on shutdown — in process through runCli, and as a real process receiving SIGTERM.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { describe, expect, onTestFinished, test } from 'vitest';
import { runCli } from '../../packages/client/src/cli.js';
import type { ClientCliIo } from '../../packages/client/src/cli.js';
import { AGENT_VERSION } from '../../packages/client/src/tunnel-agent.js';
import { echoTarget, writeFile } from './fixtures.js';
import { tempDir } from '../helpers/temp-dir.js';
import type { LogLine } from './fixtures.js';
import { startInProcessServer } from '../helpers/in-process.js';
import { withDeadline, pollUntil } from '../helpers/streams.js';

const SECRET = 's3cr3t-token-value';
const BIN = fileURLToPath(new URL('../../packages/client/dist/bin.js', import.meta.url));

function sink(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, cb) {
      chunks.push(chunk.toString('utf8'));
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
}

function io(argv: string[], env: Record<string, string> = {}, extra: Partial<ClientCliIo> = {}) {
  const stdout = sink();
  const stderr = sink();
  const run = runCli({
    argv,
    env,
    cwd: tempDir(),
    stdout: stdout.stream,
    stderr: stderr.stream,
    shutdown: new AbortController().signal,
    ...extra,
  });
  return { run, stdout: stdout.text, stderr: stderr.text };
}

/** A real server in-process, and the flags of an agent of cluster u1 for it. */
async function serverWithToken() {
  const s = await startInProcessServer();
  const echo = await echoTarget();
  const tokenFile = writeFile(tempDir(), 'token', await s.token('u1'));
  const argv = [
    ...['--server', `wss://127.0.0.1:${s.port}/connect`, '--token-file', tokenFile, '--ca-file', s.caFile],
    ...['--route', `apiserver=127.0.0.1:${echo.port}`, '--health-listen', 'off', '--drain-timeout-ms', '5s'],
  ];
  /** Resolves with the agent's session at the server once it has registered. */
  const registered = async () => {
    await pollUntil(() => s.server.registry.size === 1, 10_000, 'the agent to register at the server');
    return s.server.registry.all()[0]!;
  };
  return { s, argv, registered };
}

describe('tunnel-client', () => {
  test('--check-config prints the resolved configuration as JSON with secrets redacted, exit 0', async () => {
    const { run, stdout } = io(
      [
        '--check-config',
        '--server',
        'wss://tunnel.example.com',
        '--token',
        SECRET,
        '--route',
        'apiserver=10.0.0.1:443',
      ],
      { HTTPS_PROXY: 'http://user:pw-secret@proxy.corp:3128', NO_PROXY: '.svc,10.0.0.0/8' },
    );
    expect(await run).toBe(0);
    const printed = JSON.parse(stdout()) as Record<string, unknown>;
    expect(printed).toMatchObject({
      server: 'wss://tunnel.example.com/',
      token: '[redacted]',
      tokenFile: null,
      route: ['apiserver=10.0.0.1:443'],
      proxyUrl: 'http://***@proxy.corp:3128/',
      noProxy: ['.svc', '10.0.0.0/8'],
      healthListen: '127.0.0.1:8081',
    });
    expect(stdout()).not.toContain(SECRET);
    expect(stdout()).not.toContain('pw-secret');
  });

  test('a bad configuration lists every problem on stderr and exits 2', async () => {
    const { run, stderr, stdout } = io([
      '--check-config',
      '--server',
      'http://x.example.com',
      '--token',
      SECRET,
    ]);
    expect(await run).toBe(2);
    expect(stderr()).toContain('configuration problems');
    expect(stderr()).toContain('server (flag --server)');
    expect(stderr()).toContain('route (not set)');
    expect(stderr()).not.toContain(SECRET);
    expect(stdout()).toBe('');
  });

  test('--version prints the package version; an unknown flag is a usage error', async () => {
    const version = io(['--version']);
    expect(await version.run).toBe(0);
    expect(version.stdout().trim()).toBe(AGENT_VERSION);
    const unknown = io(['--no-such-flag']);
    expect(await unknown.run).toBe(2);
    expect(unknown.stderr()).toContain('--no-such-flag');
  });

  test('runs the agent until shutdown, then drains with GoAway and exits 0', async () => {
    const { argv, registered } = await serverWithToken();
    const shutdown = new AbortController();
    const logs = sink();
    const { run } = io(argv, {}, { shutdown: shutdown.signal, logDestination: logs.stream });
    const held = await registered();
    const goAway = once(held.session, 'goaway');
    await pollUntil(() => logs.text().includes('"agent registered"'), 5_000, 'the agent to register');
    shutdown.abort('SIGTERM');
    expect(await run).toBe(0);
    await withDeadline(goAway, 5_000, 'GoAway at the server');
    await pollUntil(() => held.session.isClosed, 5_000, 'the session to close at the server');
    expect(held.session.isClosed).toBe(true);
    const messages = logs
      .text()
      .trim()
      .split('\n')
      .map((l) => (JSON.parse(l) as LogLine).msg);
    expect(messages).toEqual(
      expect.arrayContaining(['agent starting', 'shutdown requested', 'agent stopped']),
    );
    expect(logs.text()).not.toContain('"token":"ey');
  });

  test('the built bin drains on SIGTERM and exits 0 (npm test builds it)', async () => {
    const { argv, registered } = await serverWithToken();
    const child = spawn(process.execPath, [BIN, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    onTestFinished(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const held = await registered();
    const goAway = once(held.session, 'goaway');
    await pollUntil(() => out.includes('"agent registered"'), 10_000, 'the agent process to register');
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    await withDeadline(goAway, 5_000, 'GoAway at the server');
    expect(out).toContain('"agent stopped"');
  });
});
