/**
 * The `tunnel-server` command line: `start` (default) runs the public server; `token create`
 * mints agent tokens; `kubeconfig` prints a kubeconfig for a cluster's route. bin.ts hands in
 * argv, env and a shutdown signal; this module never reads them from `process` itself, so tests
 * run it in-process.
 *
 * Exit codes: 0 normal (including a drained shutdown), 1 the server could not start or a
 * command failed, 2 a usage or configuration problem (every problem printed).
 */
import { readFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { Command, CommanderError } from 'commander';
import { TunnelError, isTunnelError, routeLabel } from '@cluster-tunnel/protocol';
import {
  addConfigOptions,
  createLogger,
  isDnsName,
  parseDurationMs,
  parseHostPort,
  redactConfig,
  type CliIo,
  whenAborted,
} from '@cluster-tunnel/config';
import { SERVER_CONFIG_SCHEMA, resolveServerConfig, type ServerConfig } from './config.js';
import { buildKubeconfig } from './kubeconfig.js';
import { ROUTE_CA_FILES, RouteCertificateAuthority } from './route-ca.js';
import { createLink, linkIdOf } from './http-link.js';
import { LOGIN_PATH } from './modes/http.js';
import { SIGNING_KEY_FILES, createToken, loadOrCreateSigningKeyPair } from './token-issuer.js';
import { writeAtomic } from './data-file.js';
import { DEMO_TOKEN_FILE, TunnelServer } from './tunnel-server.js';

export const SERVER_VERSION = '0.1.0';
export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
/** A usage or configuration problem the user must fix (all problems printed). */
export const EXIT_USAGE = 2;

export interface ServerCliIo extends CliIo {
  /** Called once the server listens (tests). */
  onStarted?: (server: TunnelServer) => void;
}

export async function runCli(io: ServerCliIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync([...io.argv], { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    // --help and --version exit 0; unknown flags and missing values are usage errors.
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    if (isTunnelError(err, 'TUN_ERR_CONFIG')) {
      io.stderr.write(`tunnel-server: ${err.message}\n`);
      return EXIT_USAGE;
    }
    const e = err as Error & { code?: string };
    io.stderr.write(`tunnel-server: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
    return EXIT_FAILED;
  }
}

function buildProgram(io: ServerCliIo): Command {
  const program = new Command('tunnel-server')
    .description('cluster-tunnel public server: agents dial in, users reach their clusters')
    .version(SERVER_VERSION)
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) });
  const start = program
    .command('start', { isDefault: true })
    .description('run the tunnel server (the default command)')
    .option('--check-config', 'validate the configuration, print it (secrets redacted) and exit')
    .option('--print-next-steps', 'after starting, print a demo token and the agent and kubeconfig commands');
  addConfigOptions(start, SERVER_CONFIG_SCHEMA);
  start.action(async (opts: Record<string, unknown>) => {
    const { checkConfig, printNextSteps, ...flags } = opts;
    const config = resolveServerConfig({ flags, env: io.env, cwd: io.cwd });
    if (checkConfig) {
      io.stdout.write(`${JSON.stringify(redactConfig(config, SERVER_CONFIG_SCHEMA), null, 2)}\n`);
      return;
    }
    const log = createLogger({
      name: 'tunnel-server',
      level: config.logLevel,
      format: config.logFormat,
      ...(io.logDestination === undefined ? {} : { destination: io.logDestination }),
    });
    const server = new TunnelServer(config, { log });
    try {
      await server.start();
    } catch (err) {
      server.destroy();
      throw err;
    }
    if (printNextSteps) await printSteps(config, server, io);
    io.onStarted?.(server);
    await whenAborted(io.shutdown);
    log.info({ signal: String(io.shutdown.reason), drainTimeoutMs: config.drainTimeoutMs }, 'draining');
    await server.close();
    log.info('stopped');
  });

  const token = program.command('token').description('agent tokens');
  token
    .command('create')
    .description('print a signed token for an agent of one cluster')
    .requiredOption('--cluster <uid>', 'cluster id the token grants (lower-case letters and digits)')
    .option(
      '--domain <domain>',
      "the tunnel server's domain (its --domain): the token's audience, accepted by that server only",
      SERVER_CONFIG_SCHEMA.domain.default,
    )
    .option('--ttl <duration>', 'lifetime, e.g. 24h, 8760h', '8760h')
    .option('--data-dir <dir>', 'server data directory holding the signing key', './.tunnel')
    .option('--signing-key <file>', 'Ed25519 private key (PEM); default <data-dir>/token-signing.key')
    .action(async (o: TokenCreateFlags) => {
      const ttlMs = parseDurationMs(o.ttl);
      if (ttlMs === undefined || ttlMs === 0) {
        throw new TunnelError('TUN_ERR_CONFIG', `--ttl: ${JSON.stringify(o.ttl)} is not a duration like 24h`);
      }
      // Spelled as the server's config spells its domain, so `--domain Proxy.Example.com.` matches.
      const audience = o.domain.toLowerCase().replace(/\.$/, '');
      if (!isDnsName(audience)) {
        throw new TunnelError('TUN_ERR_CONFIG', `--domain: ${JSON.stringify(o.domain)} is not a DNS name`);
      }
      const privateKeyPem = o.signingKey
        ? await readFile(resolve(io.cwd, o.signingKey), 'utf8')
        : (await loadOrCreateSigningKeyPair(resolve(io.cwd, o.dataDir))).privateKeyPem;
      io.stdout.write(`${await createToken({ privateKeyPem, clusterId: o.cluster, audience, ttlMs })}\n`);
    });

  program
    .command('link')
    .description('signed links to http routes (dashboards)')
    .command('create')
    .description("print a link that opens a session on one cluster's http route")
    .requiredOption('--cluster <uid>', 'cluster id')
    .requiredOption('--route <name>', 'the route name the agent serves (e.g. dashboard)')
    .option('--user <name>', 'who the session is for (logged with every request)', 'user')
    .option('--ttl <duration>', 'how long the link may be opened', '10m')
    .option('--session-ttl <duration>', 'how long the session it opens lasts', '8h')
    .option('--domain <domain>', "the tunnel server's domain", SERVER_CONFIG_SCHEMA.domain.default)
    .option('--port <port>', 'the public port, when not 443', '443')
    .option('--data-dir <dir>', 'server data directory holding the signing key', './.tunnel')
    .option('--signing-key <file>', 'Ed25519 private key (PEM); default <data-dir>/token-signing.key')
    .action(async (o: LinkCreateFlags) => {
      const ttlMs = parseDurationMs(o.ttl);
      const sessionTtlMs = parseDurationMs(o.sessionTtl);
      if (!ttlMs || !sessionTtlMs) {
        throw new TunnelError('TUN_ERR_CONFIG', '--ttl and --session-ttl take durations like 10m, 8h');
      }
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535) {
        throw new TunnelError('TUN_ERR_CONFIG', `--port: ${JSON.stringify(o.port)} is not a port`);
      }
      const domain = o.domain.toLowerCase().replace(/\.$/, '');
      const hostname = `${routeLabel(o.cluster, o.route)}.${domain}`;
      const privateKeyPem = o.signingKey
        ? await readFile(resolve(io.cwd, o.signingKey), 'utf8')
        : (await loadOrCreateSigningKeyPair(resolve(io.cwd, o.dataDir))).privateKeyPem;
      const token = await createLink({ privateKeyPem, hostname, user: o.user, ttlMs, sessionTtlMs });
      const authority = port === 443 ? hostname : `${hostname}:${port}`;
      io.stdout.write(`https://${authority}${LOGIN_PATH}?token=${token}\n`);
      // For people; scripts read the link from stdout.
      io.stderr.write(
        `link id ${linkIdOf(token)} (for ${o.user}): add it to the server's revokedFile to end the link and its session\n`,
      );
    });

  program
    .command('kubeconfig')
    .description("print a kubeconfig that reaches a cluster's API server through the tunnel")
    .requiredOption('--cluster <uid>', 'cluster id')
    .option(
      '--mode <mode>',
      "the route's mode on the agent: passthrough (TLS ends at the API server) or agent-tls (TLS ends at the agent)",
      'passthrough',
    )
    .option(
      '--ca-file <file>',
      "PEM CA to trust: the API server's CA (passthrough, required); the route CA (agent-tls, default <data-dir>/route-ca.crt)",
    )
    .option('--data-dir <dir>', 'server data directory holding the route CA (agent-tls)', './.tunnel')
    .option('--client-cert <file>', 'client certificate (PEM; passthrough only)')
    .option('--client-key <file>', 'client key (PEM; passthrough only)')
    .option('--token <token>', 'bearer token for the API server')
    .option(
      '--exec-command <command>',
      'client-go exec credential plugin (OIDC, cloud IAM) that prints a token',
    )
    .option('--exec-arg <arg>', 'an argument of the exec command (repeat for more)', collect, [])
    .option(
      '--exec-api-version <version>',
      "the plugin's ExecCredential API version",
      'client.authentication.k8s.io/v1',
    )
    .option('--server-url <url>', 'server URL (default https://cluster-<uid>.<domain>:<port>)')
    .option('--domain <domain>', 'tunnel domain', 'proxy.localhost')
    .option(
      '--listen <host:port>',
      'the server listen address (its port goes into the URL)',
      '127.0.0.1:8443',
    )
    .action(async (o: KubeconfigFlags) => {
      const listen = parseHostPort(o.listen);
      if (typeof listen === 'string') throw new TunnelError('TUN_ERR_CONFIG', `--listen: ${listen}`);
      if (o.mode !== 'passthrough' && o.mode !== 'agent-tls') {
        throw new TunnelError(
          'TUN_ERR_CONFIG',
          `--mode: ${JSON.stringify(o.mode)} is not passthrough or agent-tls`,
        );
      }
      if (o.execArg.length > 0 && o.execCommand === undefined) {
        throw new TunnelError('TUN_ERR_CONFIG', '--exec-arg needs --exec-command');
      }
      const caFile = o.caFile ?? (o.mode === 'agent-tls' ? join(o.dataDir, ROUTE_CA_FILES.cert) : undefined);
      if (caFile === undefined) {
        throw new TunnelError(
          'TUN_ERR_CONFIG',
          "--ca-file: the API server's CA is required in passthrough mode",
        );
      }
      const read = (f?: string) => (f === undefined ? undefined : readFile(resolve(io.cwd, f), 'utf8'));
      const caPem = await read(caFile)!.catch((cause: NodeJS.ErrnoException) => {
        throw new TunnelError(
          'TUN_ERR_CONFIG',
          o.caFile === undefined
            ? `no route CA at ${caFile} (${cause.code}): give --data-dir of a server that made one, or --ca-file`
            : `--ca-file: cannot read ${caFile} (${cause.code})`,
          { cause },
        );
      });
      io.stdout.write(
        buildKubeconfig({
          clusterId: o.cluster,
          domain: o.domain,
          port: listen.port,
          mode: o.mode,
          caPem,
          clientCertPem: await read(o.clientCert),
          clientKeyPem: await read(o.clientKey),
          token: o.token,
          ...(o.execCommand === undefined
            ? {}
            : { exec: { command: o.execCommand, args: o.execArg, apiVersion: o.execApiVersion } }),
          serverUrl: o.serverUrl,
        }),
      );
    });

  program
    .command('route-ca')
    .description('the route CA that signs agent-tls route certificates')
    .command('create')
    .description('make the route CA in the data directory (if it is not there), to share with every replica')
    .option('--data-dir <dir>', 'directory to write route-ca.crt and route-ca.key (0600) into', './.tunnel')
    .action(async (o: { dataDir: string }) => {
      const files = await RouteCertificateAuthority.dataDirFiles(resolve(io.cwd, o.dataDir));
      const ca = await RouteCertificateAuthority.load(files, { create: true });
      io.stdout.write(`${files.cert}\n${files.key}\n`);
      io.stderr.write(
        [
          `route CA valid until ${ca.notAfter.toISOString()}. Give every replica both files (routeCaCert, routeCaKey), e.g.:`,
          `  kubectl -n tunnel-server create secret tls tunnel-server-route-ca --cert=${files.cert} --key=${files.key}`,
          '',
        ].join('\n'),
      );
    });
  return program;
}

async function printSteps(config: ServerConfig, server: TunnelServer, io: ServerCliIo): Promise<void> {
  const keyPath = join(config.dataDir, SIGNING_KEY_FILES.privateKey);
  let privateKeyPem: string;
  try {
    privateKeyPem = await readFile(keyPath, 'utf8');
  } catch {
    return; // keys managed elsewhere (production): nothing to mint here
  }
  const demoToken = await createToken({
    privateKeyPem,
    clusterId: 'demo',
    audience: config.domain,
    ttlMs: 24 * 3600_000,
  });
  const tokenFile = join(config.dataDir, DEMO_TOKEN_FILE);
  // Atomic: a file left from an earlier run with looser permissions is replaced, not reused.
  await writeAtomic(tokenFile, `${demoToken}\n`, 0o600);
  const rel = (p: string) => relative(io.cwd, p) || '.';
  const { port } = server.address;
  const host = config.listen.host === '0.0.0.0' ? '127.0.0.1' : config.listen.host;
  const caFile = rel(join(config.dataDir, 'ca.crt'));
  io.stderr.write(
    [
      '',
      `cluster-tunnel server ${config.serverId} is listening on ${host}:${port} (domain ${config.domain}).`,
      '',
      `1. A 24h agent token for cluster "demo" is in ${rel(tokenFile)}:`,
      `   ${demoToken.slice(0, 24)}…  (more: npx tunnel-server token create --cluster <uid> --domain ${config.domain})`,
      '2. Run an agent next to your cluster (here it forwards to an API server at 127.0.0.1:6443):',
      `   npx tunnel-client --server wss://${host}:${port}/connect --ca-file ${caFile} \\`,
      `     --token-file ${rel(tokenFile)} --route apiserver=127.0.0.1:6443`,
      "3. Make a kubeconfig (the CA is your API server's; no DNS needed with --server-url):",
      `   npx tunnel-server kubeconfig --cluster demo --ca-file <apiserver-ca.pem> \\`,
      `     --server-url https://${host}:${port} --domain ${config.domain} > demo.kubeconfig`,
      '   kubectl --kubeconfig demo.kubeconfig get pods',
      '4. Open a dashboard: give the agent an http route (e.g. --route dash=http://127.0.0.1:8080),',
      '   then open the link this prints in a browser (*.localhost resolves to this machine):',
      `   npx tunnel-server link create --cluster demo --route dash --port ${port} --domain ${config.domain}`,
      '5. An API server whose certificate cannot carry the route name (EKS, AKS, GKE): end TLS at the agent',
      '   with --route apiserver=<host>:443,mode=agent-tls,ca=<apiserver-ca.pem>, then trust the route CA:',
      `   npx tunnel-server kubeconfig --cluster demo --mode agent-tls --token <bearer-token> \\`,
      `     --data-dir ${rel(config.dataDir)} --server-url https://${host}:${port} --domain ${config.domain}`,
      '',
    ].join('\n'),
  );
}

interface LinkCreateFlags {
  cluster: string;
  route: string;
  user: string;
  ttl: string;
  sessionTtl: string;
  domain: string;
  port: string;
  dataDir: string;
  signingKey?: string;
}

interface KubeconfigFlags {
  cluster: string;
  mode: string;
  caFile?: string;
  dataDir: string;
  clientCert?: string;
  clientKey?: string;
  token?: string;
  execCommand?: string;
  execArg: string[];
  execApiVersion: string;
  serverUrl?: string;
  domain: string;
  listen: string;
}

/** commander's repeatable option: each use adds one value. */
function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

interface TokenCreateFlags {
  cluster: string;
  domain: string;
  ttl: string;
  dataDir: string;
  signingKey?: string;
}
