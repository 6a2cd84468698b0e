// The configuration layer of both CLIs: precedence, all-at-once problems, secrets, value formats,
// routes, freezing, --help and docs/CONFIG.md kept in step with the schemas.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { describe, expect, test } from 'vitest';
import { addConfigOptions, describeConfig, parseDurationMs, redactConfig } from '@cluster-tunnel/config';
import type { ConfigSchema } from '@cluster-tunnel/config';
import { CLIENT_CONFIG_SCHEMA, resolveClientConfig } from '../../packages/client/src/config.js';
import { SERVER_CONFIG_SCHEMA, resolveServerConfig } from '../../packages/server/src/config.js';
import { tempDir } from '../helpers/temp-dir.js';

const SECRET = 's3cr3t-token-value';

function write(dir: string, name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** Runs fn, expects TUN_ERR_CONFIG, returns the listed problems. */
function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    const e = err as { code?: string; message: string; details?: { problems?: string[] } };
    expect(e.code).toBe('TUN_ERR_CONFIG');
    const problems = e.details?.problems ?? [];
    expect(e.message).toContain(`${problems.length} configuration problem`);
    return problems;
  }
  throw new Error('expected a TUN_ERR_CONFIG error');
}

/** A client input that is valid apart from what the test adds. */
function clientBase(dir: string) {
  return {
    cwd: dir,
    hostname: 'agent-host',
    env: { TUNNEL_CLIENT_SERVER: 'wss://tunnel.example.com/connect', TUNNEL_CLIENT_TOKEN: SECRET } as Record<
      string,
      string | undefined
    >,
    argv: ['--route', 'apiserver=kubernetes.default.svc:443'],
  };
}

describe('server configuration', () => {
  test('no flags, env or file gives the documented defaults', () => {
    const dir = tempDir();
    const cfg = resolveServerConfig({ argv: [], env: {}, cwd: dir, hostname: 'node-1' });
    expect(cfg.listen).toEqual({ host: '127.0.0.1', port: 8443 });
    expect(cfg.domain).toBe('proxy.localhost');
    expect(cfg.dataDir).toBe(resolve(dir, '.tunnel'));
    expect(cfg.tokenPublicKey).toEqual([join(dir, '.tunnel', 'token-signing.pub')]);
    expect(cfg.adminListen).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(cfg.serverId).toMatch(/^node-1-[0-9a-f]{6}$/);
    expect(cfg).toMatchObject({
      configFile: undefined,
      tlsCert: undefined,
      handshakeTimeoutMs: 10_000,
      keepaliveIntervalMs: 30_000,
      keepaliveTimeoutMs: 10_000,
      drainTimeoutMs: 30_000,
      maxAgents: 10_000,
      logLevel: 'info',
      logFormat: 'json',
    });
  });

  test.each([
    ['listen', 'listen: 10.0.0.1:1001', 'TUNNEL_SERVER_LISTEN', '10.0.0.2:1002', '--listen', '10.0.0.3:1003'],
    ['logLevel', 'logLevel: warn', 'TUNNEL_SERVER_LOG_LEVEL', 'error', '--log-level', 'debug'],
    [
      'handshakeTimeoutMs',
      'handshakeTimeoutMs: 1s',
      'TUNNEL_SERVER_HANDSHAKE_TIMEOUT_MS',
      '2s',
      '--handshake-timeout-ms',
      '3000',
    ],
  ] as const)(
    '%s: a flag beats env, env beats the file, the file beats the default',
    (key, yaml, envName, envValue, flag, flagValue) => {
      const dir = tempDir();
      const file = write(dir, 'server.yaml', `${yaml}\n`);
      const run = (withEnv: boolean, withFlag: boolean) =>
        resolveServerConfig({
          cwd: dir,
          env: withEnv ? { [envName]: envValue } : {},
          argv: ['--config', file, ...(withFlag ? [flag, flagValue] : [])],
        })[key];
      const value = (text: string) =>
        key === 'listen'
          ? { host: text.split(':')[0], port: Number(text.split(':')[1]) }
          : key === 'handshakeTimeoutMs'
            ? parseDurationMs(text)
            : text;
      expect(run(true, true)).toEqual(value(flagValue));
      expect(run(true, false)).toEqual(value(envValue));
      expect(run(false, false)).toEqual(value(yaml.split(': ')[1] ?? ''));
      const dflt = resolveServerConfig({ cwd: dir, env: {}, argv: [] })[key];
      expect(dflt).not.toEqual(value(yaml.split(': ')[1] ?? ''));
    },
  );

  test('the config file may be named by env, and its relative paths resolve against its directory', () => {
    const dir = tempDir();
    const file = write(dir, 'server.yaml', 'dataDir: data\nrevokedFile: revoked.txt\n');
    const cfg = resolveServerConfig({ cwd: '/', env: { TUNNEL_SERVER_CONFIG: file }, argv: [] });
    expect(cfg.configFile).toBe(file);
    expect(cfg.dataDir).toBe(join(dir, 'data'));
    expect(cfg.revokedFile).toBe(join(dir, 'revoked.txt'));
    expect(cfg.tokenPublicKey).toEqual([join(dir, 'data', 'token-signing.pub')]);
  });

  test('three bad values in three layers are reported together as three problems', () => {
    const dir = tempDir();
    const file = write(dir, 'server.yaml', 'maxAgents: 0\n');
    const problems = problemsOf(() =>
      resolveServerConfig({
        cwd: dir,
        env: { TUNNEL_SERVER_LISTEN: '0.0.0.0' },
        argv: ['--config', file, '--handshake-timeout-ms', 'soon'],
      }),
    );
    expect(problems).toHaveLength(3);
    expect(problems.find((p) => p.startsWith('listen (env TUNNEL_SERVER_LISTEN)'))).toBeDefined();
    expect(
      problems.find((p) => p.startsWith('handshakeTimeoutMs (flag --handshake-timeout-ms)')),
    ).toBeDefined();
    expect(problems.find((p) => p.startsWith(`maxAgents (file ${file})`))).toBeDefined();
  });

  test('an unknown YAML key is a problem, with a hint for a near miss', () => {
    const dir = tempDir();
    const file = write(
      dir,
      'server.yaml',
      'data-dir: x\nlisten: 127.0.0.1:1\nbogus: 1\nconfigFile: other.yaml\n',
    );
    const problems = problemsOf(() => resolveServerConfig({ cwd: dir, env: {}, argv: ['--config', file] }));
    expect(problems).toHaveLength(3);
    expect(problems.find((p) => p.startsWith('data-dir (file'))).toMatch(
      /unknown key; did you mean dataDir\?/,
    );
    expect(problems.find((p) => p.startsWith('bogus (file'))).toMatch(/unknown key/);
    expect(problems.find((p) => p.startsWith('configFile (file'))).toMatch(/flag or env/);
  });

  test('a missing or malformed config file, an unknown flag and a stray argument are problems', () => {
    const dir = tempDir();
    const missing = problemsOf(() =>
      resolveServerConfig({ cwd: dir, env: {}, argv: ['--config', 'nope.yaml', '--colour', 'x'] }),
    );
    expect(missing).toHaveLength(2);
    expect(missing).toContain(
      `configFile (flag --config): cannot load ${join(dir, 'nope.yaml')}: file not found`,
    );
    expect(missing).toContain('--colour (flag): unknown flag');
    const bad = write(dir, 'bad.yaml', '- just\n- a list\n');
    expect(problemsOf(() => resolveServerConfig({ cwd: dir, env: {}, argv: ['--config', bad] }))[0]).toMatch(
      /mapping/,
    );
    expect(problemsOf(() => resolveServerConfig({ cwd: dir, env: {}, argv: ['start'] }))).toHaveLength(1);
  });

  test('tlsCert without tlsKey is a problem; both resolve to absolute paths', () => {
    const dir = tempDir();
    write(dir, 'tls.crt', 'cert');
    write(dir, 'tls.key', 'key');
    const problems = problemsOf(() =>
      resolveServerConfig({ cwd: dir, env: { TUNNEL_SERVER_TLS_CERT: 'tls.crt' }, argv: [] }),
    );
    expect(problems).toEqual([
      'tlsCert (env TUNNEL_SERVER_TLS_CERT): set without tlsKey; give both or neither',
    ]);
    const cfg = resolveServerConfig({
      cwd: dir,
      env: {},
      argv: ['--tls-cert', 'tls.crt', '--tls-key=tls.key'],
    });
    expect([cfg.tlsCert, cfg.tlsKey]).toEqual([join(dir, 'tls.crt'), join(dir, 'tls.key')]);
    const gone = problemsOf(() =>
      resolveServerConfig({ cwd: dir, env: {}, argv: ['--tls-cert', 'x.crt', '--tls-key', 'tls.key'] }),
    );
    expect(gone).toEqual([`tlsCert (flag --tls-cert): file not found: ${join(dir, 'x.crt')}`]);
  });

  test('adminListen is disabled by off or an empty value; domain must be a DNS name', () => {
    const dir = tempDir();
    expect(
      resolveServerConfig({ cwd: dir, env: { TUNNEL_SERVER_ADMIN_LISTEN: 'off' } }).adminListen,
    ).toBeUndefined();
    expect(
      resolveServerConfig({ cwd: dir, env: {}, argv: ['--admin-listen', ''] }).adminListen,
    ).toBeUndefined();
    expect(
      resolveServerConfig({ cwd: dir, env: { TUNNEL_SERVER_DOMAIN: 'Tunnel.Example.COM.' } }).domain,
    ).toBe('tunnel.example.com');
    const problems = problemsOf(() =>
      resolveServerConfig({ cwd: dir, env: { TUNNEL_SERVER_DOMAIN: 'bad_name!' } }),
    );
    expect(problems[0]).toMatch(/^domain \(env TUNNEL_SERVER_DOMAIN\): expected a DNS name/);
  });

  test('tokenPublicKey takes a repeated flag, a comma list in env, and checks the files exist', () => {
    const dir = tempDir();
    write(dir, 'a.pub', 'a');
    write(dir, 'b.pub', 'b');
    const byFlag = resolveServerConfig({
      cwd: dir,
      env: {},
      argv: ['--token-public-key', 'a.pub', '--token-public-key', 'b.pub'],
    });
    expect(byFlag.tokenPublicKey).toEqual([join(dir, 'a.pub'), join(dir, 'b.pub')]);
    const byEnv = resolveServerConfig({ cwd: dir, env: { TUNNEL_SERVER_TOKEN_PUBLIC_KEY: 'a.pub, b.pub' } });
    expect(byEnv.tokenPublicKey).toEqual(byFlag.tokenPublicKey);
    const problems = problemsOf(() =>
      resolveServerConfig({ cwd: dir, env: { TUNNEL_SERVER_TOKEN_PUBLIC_KEY: 'a.pub,c.pub' } }),
    );
    expect(problems).toEqual([
      `tokenPublicKey (env TUNNEL_SERVER_TOKEN_PUBLIC_KEY): file not found: ${join(dir, 'c.pub')}`,
    ]);
  });

  test('tcpRoutes come from repeated flags, a comma list in env, or a YAML map of label to address', () => {
    const dir = tempDir();
    const byFlag = resolveServerConfig({
      cwd: dir,
      env: {},
      argv: ['--tcp-route', 'cluster-u1-db=0.0.0.0:15432', '--tcp-route', 'cluster-u1=127.0.0.1:16443'],
    });
    expect(byFlag.tcpRoutes).toEqual([
      { name: 'cluster-u1-db', host: '0.0.0.0', port: 15432 },
      { name: 'cluster-u1', host: '127.0.0.1', port: 16443 },
    ]);
    const byEnv = resolveServerConfig({
      cwd: dir,
      env: { TUNNEL_SERVER_TCP_ROUTES: 'cluster-u1-db=0.0.0.0:15432, cluster-u2-ssh=0.0.0.0:2222' },
    });
    expect(byEnv.tcpRoutes.map((r) => r.name)).toEqual(['cluster-u1-db', 'cluster-u2-ssh']);
    const file = write(dir, 'server.yaml', 'tcpRoutes:\n  cluster-u1-db: 0.0.0.0:15432\n');
    const byFile = resolveServerConfig({ cwd: dir, env: {}, argv: ['--config', file] });
    expect(byFile.tcpRoutes).toEqual([{ name: 'cluster-u1-db', host: '0.0.0.0', port: 15432 }]);
    expect(resolveServerConfig({ cwd: dir, env: {} }).tcpRoutes).toEqual([]);
  });

  test('tcpRoutes problems are all reported: not a label, the apiserver alias, clashing ports', () => {
    const problems = problemsOf(() =>
      resolveServerConfig({
        cwd: tempDir(),
        env: {},
        argv: [
          '--listen',
          '0.0.0.0:8443',
          '--admin-listen',
          '127.0.0.1:9090',
          '--tcp-route',
          'cluster-u1-apiserver=127.0.0.1:8443',
          '--tcp-route',
          'cluster-u1-db=127.0.0.1:9090',
          '--tcp-route',
          'cluster-u1-ssh=0.0.0.0:2222',
          '--tcp-route',
          'cluster-u1-vnc=10.0.0.1:2222',
        ],
      }),
    );
    expect(problems).toEqual([
      expect.stringMatching(/^tcpRoutes: cluster-u1-apiserver is not a route label/),
      expect.stringMatching(/^tcpRoutes: cluster-u1-apiserver listens on 127.0.0.1:8443, which listen uses/),
      expect.stringMatching(/^tcpRoutes: cluster-u1-db listens on 127.0.0.1:9090, which adminListen uses/),
      expect.stringMatching(
        /^tcpRoutes: cluster-u1-vnc listens on 10.0.0.1:2222, which tcpRoutes cluster-u1-ssh/,
      ),
    ]);
    const shape = problemsOf(() =>
      resolveServerConfig({
        cwd: tempDir(),
        env: { TUNNEL_SERVER_TCP_ROUTES: 'db=127.0.0.1:5432,cluster-u1-x=nope' },
      }),
    );
    expect(shape).toHaveLength(1);
    expect(shape[0]).toMatch(/tcpRoutes \(env TUNNEL_SERVER_TCP_ROUTES\): route name "db" must match/);
    expect(shape[0]).toMatch(/route cluster-u1-x: expected host:port/);
  });

  test('the resolved config is deeply frozen', () => {
    const cfg = resolveServerConfig({ cwd: tempDir(), env: {} });
    expect(Object.isFrozen(cfg)).toBe(true);
    expect(Object.isFrozen(cfg.listen)).toBe(true);
    expect(Object.isFrozen(cfg.tokenPublicKey)).toBe(true);
    expect(() => {
      (cfg.listen as { port: number }).port = 1;
    }).toThrow(TypeError);
  });

  test('flags parsed by a caller-built commander command are accepted as they are', () => {
    const cmd = new Command();
    addConfigOptions(cmd, SERVER_CONFIG_SCHEMA);
    cmd.parse(['--max-agents', '7', '--log-format', 'pretty'], { from: 'user' });
    const cfg = resolveServerConfig({
      cwd: tempDir(),
      env: { TUNNEL_SERVER_MAX_AGENTS: '9' },
      flags: cmd.opts(),
    });
    expect([cfg.maxAgents, cfg.logFormat]).toEqual([7, 'pretty']);
  });
});

describe('client configuration', () => {
  test('a minimal valid client resolves, with defaults for the rest', () => {
    const base = clientBase(tempDir());
    const cfg = resolveClientConfig(base);
    expect(cfg).toMatchObject({
      server: 'wss://tunnel.example.com/connect',
      token: SECRET,
      tokenFile: undefined,
      route: [{ name: 'apiserver', host: 'kubernetes.default.svc', port: 443 }],
      agentId: 'agent-host',
      healthListen: { host: '127.0.0.1', port: 8081 },
      backoffInitialMs: 500,
      backoffMaxMs: 30_000,
      healthyResetMs: 60_000,
      authRetryMs: 60_000,
      keepaliveIntervalMs: 15_000,
      keepaliveTimeoutMs: 10_000,
      proxyUrl: undefined,
      noProxy: [],
    });
    expect(Object.isFrozen(cfg.route[0])).toBe(true);
  });

  test('routes come from a repeated flag, an env list, a YAML list or a YAML map', () => {
    const dir = tempDir();
    const base = clientBase(dir);
    const expected = [
      { name: 'apiserver', host: 'kubernetes.default.svc', port: 443 },
      { name: 'dash-1', host: '::1', port: 8080 },
    ];
    const flags = ['--route', 'apiserver=kubernetes.default.svc:443', '--route', 'dash-1=[::1]:8080'];
    expect(resolveClientConfig({ ...base, argv: flags }).route).toEqual(expected);
    const env = {
      ...base.env,
      TUNNEL_CLIENT_ROUTE: 'apiserver=kubernetes.default.svc:443,dash-1=[::1]:8080',
    };
    expect(resolveClientConfig({ ...base, env, argv: [] }).route).toEqual(expected);
    const list = write(
      dir,
      'list.yaml',
      'route:\n  - apiserver=kubernetes.default.svc:443\n  - dash-1=[::1]:8080\n',
    );
    expect(resolveClientConfig({ ...base, argv: ['--config', list] }).route).toEqual(expected);
    const map = write(
      dir,
      'map.yaml',
      'route:\n  apiserver: kubernetes.default.svc:443\n  dash-1: "[::1]:8080"\n',
    );
    expect(resolveClientConfig({ ...base, argv: ['--config', map] }).route).toEqual(expected);
  });

  test('without routes, KUBERNETES_SERVICE_* give the apiserver route; otherwise none is a problem', () => {
    const base = clientBase(tempDir());
    const inPod = { ...base.env, KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' };
    expect(resolveClientConfig({ ...base, env: inPod, argv: [] }).route).toEqual([
      { name: 'apiserver', host: 'fd00::1', port: 443 },
    ]);
    // An explicit route replaces the in-cluster default rather than adding to it.
    expect(resolveClientConfig({ ...base, env: inPod, argv: ['--route', 'x=a:1'] }).route).toEqual([
      { name: 'x', host: 'a', port: 1 },
    ]);
    expect(problemsOf(() => resolveClientConfig({ ...base, argv: [] }))).toEqual([
      'route (not set): required; set --route, TUNNEL_CLIENT_ROUTE or route: in the config file',
    ]);
  });

  test('bad route names, targets and duplicates are all reported', () => {
    const base = clientBase(tempDir());
    const argv = ['--route', 'Bad_Name=a:1', '--route', 'ok=a', '--route', 'ok=b:2', '--route', 'ok=c:3'];
    const problems = problemsOf(() => resolveClientConfig({ ...base, argv }));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(
      /^route \(flag --route\): route name "Bad_Name" must match .*; route ok: .*port is missing.*; route name ok is used twice$/,
    );
  });

  test('the token is never echoed, whatever goes wrong around it', () => {
    const dir = tempDir();
    const tokenFile = write(dir, 'token', SECRET);
    const base = clientBase(dir);
    const broken = write(dir, 'broken.yaml', `token: "${SECRET}\nserver: [\n`);
    const typed = write(dir, 'typed.yaml', `token: [${SECRET}]\n`);
    const cases = [
      () => resolveClientConfig({ ...base, argv: [...base.argv, '--token-file', tokenFile] }),
      () => resolveClientConfig({ ...base, argv: [...base.argv, '--config', broken] }),
      () =>
        resolveClientConfig({ ...base, env: {}, argv: [...base.argv, '--config', typed, '--server', 'x'] }),
      () => resolveClientConfig({ ...base, argv: [...base.argv, '--tokn', SECRET, `--tokenn=${SECRET}`] }),
      () =>
        resolveClientConfig({ ...base, env: { ...base.env, HTTPS_PROXY: `ftp://user:${SECRET}@proxy:1` } }),
    ];
    for (const run of cases) {
      let thrown: unknown;
      try {
        run();
      } catch (err) {
        thrown = err;
      }
      const e = thrown as { code: string; message: string; details: unknown };
      expect(e.code).toBe('TUN_ERR_CONFIG');
      expect(`${e.message}\n${JSON.stringify(e.details)}`).not.toContain(SECRET);
    }
    const cfg = resolveClientConfig({
      ...base,
      env: { ...base.env, HTTPS_PROXY: `http://user:${SECRET}@proxy:3128` },
    });
    expect(cfg.proxyUrl).toBe(`http://user:${SECRET}@proxy:3128/`);
    expect(JSON.stringify(redactConfig(cfg, CLIENT_CONFIG_SCHEMA))).not.toContain(SECRET);
    expect(redactConfig(cfg, CLIENT_CONFIG_SCHEMA)).toMatchObject({
      token: '[redacted]',
      route: ['apiserver=kubernetes.default.svc:443'],
    });
  });

  test('exactly one of token and tokenFile is required', () => {
    const dir = tempDir();
    const base = clientBase(dir);
    const both = problemsOf(() =>
      resolveClientConfig({ ...base, argv: [...base.argv, '--token-file', write(dir, 't', 'x')] }),
    );
    expect(both).toEqual([
      'token (env TUNNEL_CLIENT_TOKEN): set together with tokenFile (flag --token-file); set exactly one',
    ]);
    const neither = problemsOf(() =>
      resolveClientConfig({ ...base, env: { TUNNEL_CLIENT_SERVER: 'wss://t.example' } }),
    );
    expect(neither).toHaveLength(1);
    expect(neither[0]).toMatch(/^token \(not set\): set exactly one of token/);
    // An empty value unsets an optional key, so env can clear what the file set.
    const file = write(dir, 'c.yaml', 'tokenFile: t\n');
    const cfg = resolveClientConfig({
      ...base,
      env: { ...base.env, TUNNEL_CLIENT_TOKEN: '' },
      argv: [...base.argv, '--config', file],
    });
    expect([cfg.token, cfg.tokenFile]).toEqual([undefined, join(dir, 't')]);
  });

  test('server must be wss, or ws to a loopback host', () => {
    const base = clientBase(tempDir());
    const at = (server: string) => () =>
      resolveClientConfig({ ...base, env: { ...base.env, TUNNEL_CLIENT_SERVER: server } });
    expect(at('ws://127.0.0.1:8443/connect')().server).toBe('ws://127.0.0.1:8443/connect');
    expect(at('ws://localhost:8443')().server).toBe('ws://localhost:8443/');
    expect(problemsOf(at('ws://tunnel.example.com'))[0]).toMatch(
      /^server \(env TUNNEL_CLIENT_SERVER\): ws:\/\/ is allowed only/,
    );
    expect(problemsOf(at('https://tunnel.example.com'))[0]).toMatch(/the scheme must be wss or ws/);
    expect(problemsOf(at('not a url'))[0]).toMatch(/expected a URL/);
  });

  test('the egress proxy comes from the standard variables', () => {
    const base = clientBase(tempDir());
    const env = (extra: Record<string, string>) => ({ ...base, env: { ...base.env, ...extra } });
    expect(resolveClientConfig(env({ http_proxy: 'http://h:1', HTTPS_PROXY: 'http://s:2' })).proxyUrl).toBe(
      'http://s:2/',
    );
    expect(resolveClientConfig(env({ https_proxy: 'proxy.corp:3128' })).proxyUrl).toBe(
      'http://proxy.corp:3128/',
    );
    expect(resolveClientConfig(env({ HTTPS_PROXY: '', http_proxy: 'http://h:1' })).proxyUrl).toBe(
      'http://h:1/',
    );
    expect(resolveClientConfig(env({ no_proxy: ' .svc, Localhost,,10.0.0.0/8 ' })).noProxy).toEqual([
      '.svc',
      'localhost',
      '10.0.0.0/8',
    ]);
  });

  test('backoffInitialMs may not exceed backoffMaxMs', () => {
    const base = clientBase(tempDir());
    const problems = problemsOf(() =>
      resolveClientConfig({ ...base, argv: [...base.argv, '--backoff-initial-ms', '1m'] }),
    );
    expect(problems).toEqual([
      'backoffInitialMs (flag --backoff-initial-ms): 60000ms exceeds backoffMaxMs (30000ms)',
    ]);
  });
});

describe('durations', () => {
  test.each([
    [500, 500],
    ['500', 500], // bare digits are milliseconds
    ['500ms', 500],
    ['10s', 10_000],
    ['1.5s', 1500],
    ['30m', 1_800_000],
    ['1h30m', 5_400_000],
    ['8760h', 31_536_000_000],
  ] as const)('%j is %d ms', (input, ms) => {
    expect(parseDurationMs(input)).toBe(ms);
  });

  test.each(['', 'soon', '-1', '10x', '1.5ms', 's', '10 s', '1d', 1.5, -3])('%j is rejected', (input) => {
    expect(parseDurationMs(input)).toBeUndefined();
  });

  test('a duration key takes YAML numbers as milliseconds and enforces its minimum', () => {
    const dir = tempDir();
    const file = write(dir, 's.yaml', 'keepaliveIntervalMs: 45000\ndrainTimeoutMs: 0\n');
    const cfg = resolveServerConfig({ cwd: dir, env: {}, argv: ['--config', file] });
    expect([cfg.keepaliveIntervalMs, cfg.drainTimeoutMs]).toEqual([45_000, 0]);
    const problems = problemsOf(() =>
      resolveServerConfig({ cwd: dir, env: { TUNNEL_SERVER_KEEPALIVE_TIMEOUT_MS: '0s' } }),
    );
    expect(problems[0]).toMatch(
      /^keepaliveTimeoutMs \(env TUNNEL_SERVER_KEEPALIVE_TIMEOUT_MS\): must be at least 1ms/,
    );
  });
});

describe.each([
  ['tunnel-server', SERVER_CONFIG_SCHEMA],
  ['tunnel-client', CLIENT_CONFIG_SCHEMA],
] as const)('%s docs and help', (cli, schema: ConfigSchema) => {
  test('--help lists every flag with its env and default', () => {
    const cmd = new Command(cli);
    addConfigOptions(cmd, schema);
    const help = cmd.helpInformation({ error: false }).replace(/\s+/g, ' ');
    for (const d of describeConfig(schema)) {
      expect(help).toContain(`${d.flag} `);
      expect(help).toContain(d.env);
      if (d.default !== undefined && d.default !== '') expect(help).toContain(`default: ${d.default}`);
    }
  });

  test('docs/CONFIG.md has one table row per key, matching the schema', () => {
    const markdown = readFileSync(new URL('../../docs/CONFIG.md', import.meta.url), 'utf8');
    // The CLI's own section, up to its first subsection (which has tables of its own).
    const section =
      (markdown.split(/^## /m).find((s) => s.startsWith(`${cli}\n`)) ?? '').split(/^### /m)[0] ?? '';
    const rows = section
      .split('\n')
      .filter((line) => line.startsWith('| `'))
      .map((line) =>
        line
          .slice(1, -1)
          .split(' | ')
          .map((cell) => cell.trim().replace(/^`(.*)`$/, '$1')),
      );
    const expected = describeConfig(schema).map((d) => [
      d.key,
      d.flag,
      d.env,
      d.default ?? (d.required ? 'required' : '—'),
      d.description,
    ]);
    expect(rows).toEqual(expected);
  });
});

describe('port 0', () => {
  test('a TCP route may listen on port 0 (the kernel picks); an agent route target may not', () => {
    const server = resolveServerConfig({
      argv: ['--tcp-route', 'cluster-u1-db=127.0.0.1:0'],
      env: {},
      cwd: '/',
    });
    expect(server.tcpRoutes).toEqual([{ name: 'cluster-u1-db', host: '127.0.0.1', port: 0 }]);
    expect(() =>
      resolveClientConfig({
        argv: ['--server', 'wss://example.com', '--token', 't', '--route', 'apiserver=127.0.0.1:0'],
        env: {},
        cwd: '/',
      }),
    ).toThrow(
      expect.objectContaining({ code: 'TUN_ERR_CONFIG', message: expect.stringMatching(/from 1 to 65535/) }),
    );
  });
});

describe('http routes (URL targets with options)', () => {
  const agent = (routes: string[], env: Record<string, string> = {}, cwd = '/') =>
    resolveClientConfig({
      argv: ['--server', 'wss://example.com', '--token', 't', ...routes.flatMap((r) => ['--route', r])],
      env,
      cwd,
    });

  test('a URL target is an http route; options follow it after commas, in flags and env alike', () => {
    const dir = tempDir();
    const ca = write(dir, 'ca.pem', 'not checked here');
    const fromFlags = agent(
      [
        'dash=https://dash.svc,ca=ca.pem,serverName=Dash.Example',
        'web=http://web.svc:8080,hostHeader=web.local',
      ],
      {},
      dir,
    );
    const expected = [
      { name: 'dash', host: 'dash.svc', port: 443, scheme: 'https', ca, serverName: 'dash.example' },
      { name: 'web', host: 'web.svc', port: 8080, scheme: 'http', hostHeader: 'web.local' },
    ];
    expect(fromFlags.route).toEqual(expected);
    const fromEnv = resolveClientConfig({
      argv: ['--server', 'wss://example.com', '--token', 't'],
      env: {
        TUNNEL_CLIENT_ROUTE: `dash=https://dash.svc,ca=${ca},serverName=dash.example,web=http://web.svc:8080,hostHeader=web.local`,
      },
      cwd: '/',
    });
    expect(fromEnv.route).toEqual(expected);
    expect(agent(['v=https://10.0.0.1:8443,insecure', 'api=10.0.0.2:6443']).route).toEqual([
      { name: 'v', host: '10.0.0.1', port: 8443, scheme: 'https', insecure: true },
      { name: 'api', host: '10.0.0.2', port: 6443 },
    ]);
  });

  test('the file takes a map of route objects with the same options', () => {
    const dir = tempDir();
    write(dir, 'ca.pem', 'x');
    const file = write(
      dir,
      'agent.yaml',
      'server: wss://example.com\ntoken: t\nroute:\n  apiserver: 10.0.0.2:6443\n  dash:\n    target: https://dash.svc\n    ca: ca.pem\n    insecure: false\n',
    );
    const problems = (() => {
      try {
        resolveClientConfig({ argv: ['--config', file], env: {}, cwd: '/' });
        return [];
      } catch (err) {
        return (err as { details: { problems: string[] } }).details.problems;
      }
    })();
    // `insecure: false` is not an option spelling: a typo-like value is a problem, not ignored.
    expect(problems.join('\n')).toMatch(/route/);
    const ok = write(
      dir,
      'ok.yaml',
      'server: wss://example.com\ntoken: t\nroute:\n  dash:\n    target: https://dash.svc\n    ca: ca.pem\n',
    );
    expect(resolveClientConfig({ argv: ['--config', ok], env: {}, cwd: '/' }).route).toEqual([
      { name: 'dash', host: 'dash.svc', port: 443, scheme: 'https', ca: join(dir, 'ca.pem') },
    ]);
  });

  test.each([
    ['a path', 'dash=https://dash.svc/ui', /origin/],
    ['credentials', 'dash=https://u:p@dash.svc', /credentials/],
    ['another scheme', 'dash=ftp://dash.svc', /scheme/],
    [
      'TLS options on a passthrough host:port',
      'api=10.0.0.2:6443,insecure',
      /https targets and mode=agent-tls only/,
    ],
    ['a mode on a URL target', 'dash=https://dash.svc,mode=agent-tls', /a URL target is an http route/],
    // Not an option name: read as a route of its own, which fails as one.
    ['an unknown option', 'dash=https://dash.svc,verify=no', /route verify/],
    ['insecure with ca', 'dash=https://dash.svc,insecure,ca=/etc/hostname', /contradict/],
    ['TLS options on http', 'dash=http://dash.svc,insecure', /https targets only/],
    ['a ca that does not exist', 'dash=https://dash.svc,ca=/no/such/ca.pem', /file not found/],
    ['an option name as a route name', 'ca=10.0.0.1:443', /route option, not a route name/],
  ])('refuses %s with a problem naming the route', (_what, route, reason) => {
    expect(() => agent([route])).toThrow(
      expect.objectContaining({ code: 'TUN_ERR_CONFIG', message: expect.stringMatching(reason) }),
    );
  });

  test('tcpRoutes take no URL targets', () => {
    expect(() =>
      resolveServerConfig({ argv: ['--tcp-route', 'cluster-u1-db=http://db.svc:80'], env: {}, cwd: '/' }),
    ).toThrow(expect.objectContaining({ code: 'TUN_ERR_CONFIG' }));
  });
});

describe('agent-tls routes (host:port targets with mode=agent-tls)', () => {
  const agent = (routes: string[], env: Record<string, string> = {}, serviceAccountCaFile?: string) =>
    resolveClientConfig({
      argv: ['--server', 'wss://example.com', '--token', 't', ...routes.flatMap((r) => ['--route', r])],
      env,
      cwd: '/',
      ...(serviceAccountCaFile === undefined ? {} : { serviceAccountCaFile }),
    });

  test('take mode=agent-tls and the TLS options after host:port, in flags, env and YAML', () => {
    const dir = tempDir();
    const ca = write(dir, 'ca.pem', 'not checked here');
    const expected = [
      {
        name: 'apiserver',
        host: 'api.example',
        port: 443,
        mode: 'agent-tls',
        ca,
        serverName: 'kube.example',
      },
      { name: 'other', host: '10.0.0.2', port: 6443 },
    ];
    expect(
      agent([
        `apiserver=api.example:443,mode=agent-tls,ca=${ca},serverName=Kube.Example`,
        'other=10.0.0.2:6443,mode=passthrough',
      ]).route,
    ).toEqual(expected);
    const fromEnv = resolveClientConfig({
      argv: ['--server', 'wss://example.com', '--token', 't'],
      env: {
        TUNNEL_CLIENT_ROUTE: `apiserver=api.example:443,mode=agent-tls,ca=${ca},serverName=kube.example,other=10.0.0.2:6443`,
      },
      cwd: '/',
    });
    expect(fromEnv.route).toEqual(expected);
    const file = write(
      dir,
      'agent.yaml',
      `server: wss://example.com\ntoken: t\nroute:\n  apiserver:\n    target: api.example:443\n    mode: agent-tls\n    ca: ca.pem\n    serverName: kube.example\n  other: 10.0.0.2:6443\n`,
    );
    expect(resolveClientConfig({ argv: ['--config', file], env: {}, cwd: '/' }).route).toEqual(expected);
  });

  test.each([
    ['an unknown mode', 'api=10.0.0.2:6443,mode=http', /mode must be passthrough or agent-tls/],
    ['hostHeader', 'api=10.0.0.2:6443,mode=agent-tls,hostHeader=x', /not one of mode=agent-tls/],
    ['insecure with ca', 'api=10.0.0.2:6443,mode=agent-tls,insecure,ca=/etc/hostname', /contradict/],
    ['TLS options without the mode', 'api=10.0.0.2:6443,serverName=kube.example', /mode=agent-tls only/],
  ])('refuses %s with a problem naming the route', (_what, route, reason) => {
    expect(() => agent([route])).toThrow(
      expect.objectContaining({ code: 'TUN_ERR_CONFIG', message: expect.stringMatching(reason) }),
    );
  });

  test("in a pod, the cluster's own API server is verified against the cluster CA as kubernetes.default.svc", () => {
    const dir = tempDir();
    const saCa = write(dir, 'ca.crt', 'the cluster CA');
    const pod = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
    expect(
      agent(
        ['apiserver=10.96.0.1:443,mode=agent-tls', 'byname=kubernetes.default.svc:443,mode=agent-tls'],
        pod,
        saCa,
      ).route,
    ).toEqual([
      {
        name: 'apiserver',
        host: '10.96.0.1',
        port: 443,
        mode: 'agent-tls',
        ca: saCa,
        serverName: 'kubernetes.default.svc',
      },
      { name: 'byname', host: 'kubernetes.default.svc', port: 443, mode: 'agent-tls', ca: saCa },
    ]);
    // What the operator wrote wins; targets other than the cluster's API server are left alone.
    const own = write(dir, 'own.pem', 'x');
    expect(
      agent(
        [
          `apiserver=10.96.0.1:443,mode=agent-tls,ca=${own},serverName=api.internal`,
          'far=api.far.example:443,mode=agent-tls',
        ],
        pod,
        saCa,
      ).route,
    ).toEqual([
      {
        name: 'apiserver',
        host: '10.96.0.1',
        port: 443,
        mode: 'agent-tls',
        ca: own,
        serverName: 'api.internal',
      },
      { name: 'far', host: 'api.far.example', port: 443, mode: 'agent-tls' },
    ]);
    // Outside a pod nothing is filled in.
    expect(agent(['apiserver=10.96.0.1:443,mode=agent-tls'], {}, saCa).route).toEqual([
      { name: 'apiserver', host: '10.96.0.1', port: 443, mode: 'agent-tls' },
    ]);
  });

  test('in a pod without the cluster CA mounted, the problem says which component mounts it', () => {
    const pod = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
    expect(() =>
      agent(['apiserver=kubernetes.default.svc:443,mode=agent-tls'], pod, '/no/such/ca.crt'),
    ).toThrow(
      expect.objectContaining({
        code: 'TUN_ERR_CONFIG',
        message: expect.stringMatching(
          /route apiserver: .*\/no\/such\/ca.crt is not mounted \(deploy\/client\/components\/agent-tls/,
        ),
      }),
    );
  });
});

describe('http route access', () => {
  test('a default for every http route, overridden per route in flags, env and a YAML map', () => {
    const dir = tempDir();
    const htpasswd = write(dir, 'team.htpasswd', '');
    write(dir, 'ops.htpasswd', '');
    expect(resolveServerConfig({ cwd: dir, env: {} })).toMatchObject({
      httpAccess: 'link',
      httpHtpasswdFile: undefined,
      httpRouteAccess: [],
    });
    const byFlag = resolveServerConfig({
      cwd: dir,
      env: {},
      argv: [
        '--http-access',
        'basic',
        '--http-htpasswd-file',
        'team.htpasswd',
        '--http-route-access',
        'cluster-u1-docs=none',
        '--http-route-access',
        'cluster-u1-vm=basic:ops.htpasswd',
        '--http-route-access',
        'cluster-u1-dash=link',
      ],
    });
    expect(byFlag).toMatchObject({ httpAccess: 'basic', httpHtpasswdFile: htpasswd });
    expect(byFlag.httpRouteAccess).toEqual([
      { name: 'cluster-u1-docs', access: 'none' },
      { name: 'cluster-u1-vm', access: 'basic', htpasswdFile: join(dir, 'ops.htpasswd') },
      { name: 'cluster-u1-dash', access: 'link' },
    ]);
    const byEnv = resolveServerConfig({
      cwd: dir,
      env: { TUNNEL_SERVER_HTTP_ROUTE_ACCESS: 'cluster-u1-docs=none, cluster-u1-vm=basic:ops.htpasswd' },
    });
    expect(byEnv.httpRouteAccess.map((r) => r.access)).toEqual(['none', 'basic']);
    const sub = join(dir, 'conf');
    mkdirSync(sub);
    write(sub, 'vm.htpasswd', '');
    const file = write(
      sub,
      'server.yaml',
      'httpRouteAccess:\n  cluster-u1-vm: basic:vm.htpasswd\n  cluster-u1-docs: none\n',
    );
    const byFile = resolveServerConfig({ cwd: dir, env: {}, argv: ['--config', file] });
    // A file named in the YAML file resolves against that file's directory.
    expect(byFile.httpRouteAccess).toEqual([
      { name: 'cluster-u1-vm', access: 'basic', htpasswdFile: join(sub, 'vm.htpasswd') },
      { name: 'cluster-u1-docs', access: 'none' },
    ]);
  });

  test('every access problem is reported at once', () => {
    const dir = tempDir();
    const problems = problemsOf(() =>
      resolveServerConfig({
        cwd: dir,
        env: { TUNNEL_SERVER_HTTP_ACCESS: 'none' },
        argv: [
          '--http-route-access',
          'cluster-u1-a=basic',
          '--http-route-access',
          'cluster-u1-b=open',
          '--http-route-access',
          'cluster-u1-c=none:x',
          '--http-route-access',
          'cluster-u1-d=basic:missing.htpasswd',
          '--http-route-access',
          'Not A Label=none',
          '--http-route-access',
          'cluster-u1-b=link',
        ],
      }),
    );
    expect(problems).toHaveLength(2);
    expect(problems[0]).toMatch(/httpAccess .*expected one of link, basic, got "none"/);
    expect(problems[1]).toMatch(/httpRouteAccess/);
    for (const reason of [
      /route cluster-u1-b: access must be link, basic, basic:FILE or none, got "open"/,
      /route cluster-u1-c: only basic takes a file/,
      /route cluster-u1-d: .*file not found/,
      /route name "Not A Label" must match/,
    ])
      expect(problems[1]).toMatch(reason);
    const noFile = problemsOf(() =>
      resolveServerConfig({
        cwd: dir,
        env: {},
        argv: ['--http-access', 'basic', '--http-route-access', 'cluster-u1-a=basic'],
      }),
    );
    expect(noFile).toEqual([
      'httpAccess (flag --http-access): basic needs httpHtpasswdFile',
      'httpRouteAccess: cluster-u1-a=basic needs httpHtpasswdFile, or a file of its own (cluster-u1-a=basic:FILE)',
    ]);
  });
});
