/**
 * tunnel-server's configuration: defaults < `--config` YAML < TUNNEL_SERVER_* env < flags, every
 * problem reported in one TUN_ERR_CONFIG, resolved once into a deeply frozen ServerConfig.
 * Only this file and bin.ts read argv/env; everything else receives the resolved object.
 */
import { randomBytes } from 'node:crypto';
import { hostname as osHostname } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { ID_PATTERN, MAX_SERVER_COUNT, ROUTE_LABEL_PATTERN, clusterOfLabel } from '@cluster-tunnel/protocol';
import {
  formatHostPort,
  MAX_TIMER_MS,
  deepFreeze,
  logConfigKeys,
  flagsFromArgv,
  resolveConfigValues,
  throwIfConfigProblems,
} from '@cluster-tunnel/config';
import type {
  ConfigSchema,
  CliConfigInput,
  HostPort,
  LogFormat,
  LogLevel,
  RouteAccess,
  RouteTarget,
} from '@cluster-tunnel/config';

export const SERVER_CONFIG_SCHEMA = {
  configFile: {
    type: 'file',
    flag: 'config',
    env: 'TUNNEL_SERVER_CONFIG',
    inFile: false,
    description: 'YAML file with any of the keys below (camelCase); flags and env override it',
  },
  listen: {
    type: 'host-port',
    flag: 'listen',
    env: 'TUNNEL_SERVER_LISTEN',
    default: '127.0.0.1:8443',
    description: 'address of the one TLS port that serves agents and users (port 0 picks a free port)',
  },
  domain: {
    type: 'dns-name',
    flag: 'domain',
    env: 'TUNNEL_SERVER_DOMAIN',
    default: 'proxy.localhost',
    description: 'DNS name of the server; route hostnames are one label under it',
  },
  dataDir: {
    type: 'path',
    flag: 'data-dir',
    env: 'TUNNEL_SERVER_DATA_DIR',
    default: './.tunnel',
    description: 'directory for the generated CA, server certificate and token signing keys',
  },
  tlsCert: {
    type: 'file',
    flag: 'tls-cert',
    env: 'TUNNEL_SERVER_TLS_CERT',
    description: 'PEM certificate chain for the domain and its wildcard (with tlsKey; default: self-signed)',
  },
  tlsKey: {
    type: 'file',
    flag: 'tls-key',
    env: 'TUNNEL_SERVER_TLS_KEY',
    description: 'PEM private key of tlsCert (set both or neither)',
  },
  handshakeTimeoutMs: {
    type: 'duration-ms',
    flag: 'handshake-timeout-ms',
    env: 'TUNNEL_SERVER_HANDSHAKE_TIMEOUT_MS',
    default: '10s',
    min: 1,
    max: MAX_TIMER_MS,
    description:
      'how long a new connection may take to name its route, or to finish TLS, send its request and be authenticated',
  },
  agentWaitMs: {
    type: 'duration-ms',
    flag: 'agent-wait-ms',
    env: 'TUNNEL_SERVER_AGENT_WAIT_MS',
    default: '5s',
    min: 0,
    max: MAX_TIMER_MS,
    description:
      'how long a user connection for a cluster with no agent on this replica waits for one to register before it is refused (a replica that just started); within handshakeTimeoutMs',
  },
  agentReplyTimeoutMs: {
    type: 'duration-ms',
    flag: 'agent-reply-timeout-ms',
    env: 'TUNNEL_SERVER_AGENT_REPLY_TIMEOUT_MS',
    default: '10s',
    min: 1,
    max: MAX_TIMER_MS,
    description:
      'how long an agent may take to reach a route target and answer a stream before the next agent is tried',
  },
  maxPendingConnections: {
    type: 'int',
    flag: 'max-pending-connections',
    env: 'TUNNEL_SERVER_MAX_PENDING_CONNECTIONS',
    default: 1024,
    min: 1,
    description: 'most public-port connections not yet routed or authenticated; more are reset',
  },
  maxPendingConnectionsPerAddress: {
    type: 'int',
    flag: 'max-pending-connections-per-address',
    env: 'TUNNEL_SERVER_MAX_PENDING_CONNECTIONS_PER_ADDRESS',
    default: 64,
    min: 0,
    description:
      'the same from one IPv4 address or IPv6 /64; 0 turns it off (behind a balancer that hides client addresses)',
  },
  maxAgentsPerCluster: {
    type: 'int',
    flag: 'max-agents-per-cluster',
    env: 'TUNNEL_SERVER_MAX_AGENTS_PER_CLUSTER',
    default: 32,
    min: 1,
    description: "agent sessions one cluster's token may hold on this server; more are refused with 429",
  },
  maxSessionBufferedBytes: {
    type: 'int',
    flag: 'max-session-buffered-bytes',
    env: 'TUNNEL_SERVER_MAX_SESSION_BUFFERED_BYTES',
    default: 64 * 1024 * 1024,
    min: 256 * 1024,
    description:
      "each agent session's memory budget: received bytes held for users that are behind; above it the agent is not read",
  },
  maxTokenLifetimeMs: {
    type: 'duration-ms',
    flag: 'max-token-lifetime-ms',
    env: 'TUNNEL_SERVER_MAX_TOKEN_LIFETIME_MS',
    default: '8760h',
    min: 1000,
    max: 10 * 8760 * 3_600_000,
    description: 'agent tokens valid for longer than this (exp - iat) are refused',
  },
  tokenClockToleranceMs: {
    type: 'duration-ms',
    flag: 'token-clock-tolerance-ms',
    env: 'TUNNEL_SERVER_TOKEN_CLOCK_TOLERANCE_MS',
    default: '60s',
    min: 0,
    max: 3_600_000,
    description:
      "clock skew allowed between the token issuer and this server, for a token's exp, nbf and iat",
  },
  tokenPublicKey: {
    type: 'file-list',
    flag: 'token-public-key',
    env: 'TUNNEL_SERVER_TOKEN_PUBLIC_KEY',
    defaultText: '<dataDir>/token-signing.pub',
    description: 'PEM public key that verifies agent tokens; repeat to trust several while rotating keys',
  },
  revokedFile: {
    type: 'file',
    flag: 'revoked-file',
    env: 'TUNNEL_SERVER_REVOKED_FILE',
    mustExist: false,
    description: 'file of revoked agent token and link ids, one per line (a missing file revokes nothing)',
  },
  routeCaCert: {
    type: 'file',
    flag: 'route-ca-cert',
    env: 'TUNNEL_SERVER_ROUTE_CA_CERT',
    defaultText: '<dataDir>/route-ca.crt when serverCount is 1',
    description:
      "PEM certificate of the route CA that signs agents' agent-tls route certificates (with routeCaKey; every replica the same)",
  },
  routeCaKey: {
    type: 'file',
    flag: 'route-ca-key',
    env: 'TUNNEL_SERVER_ROUTE_CA_KEY',
    description: 'PEM ECDSA P-256 private key of routeCaCert (set both or neither)',
  },
  routeCertLifetimeMs: {
    type: 'duration-ms',
    flag: 'route-cert-lifetime-ms',
    env: 'TUNNEL_SERVER_ROUTE_CERT_LIFETIME_MS',
    default: '24h',
    min: 2000,
    max: 30 * 86_400_000,
    description:
      'lifetime of the agent-tls route certificates this server signs; agents renew at two thirds of it',
  },
  tcpRoutes: {
    type: 'route-list',
    flag: 'tcp-route',
    env: 'TUNNEL_SERVER_TCP_ROUTES',
    pattern: ROUTE_LABEL_PATTERN,
    // Port 0 picks a free port, shown in the start log and /status (tests, local runs).
    min: 0,
    description:
      'raw TCP routes, label=host:port: the server listens there and forwards each connection to an agent holding the label',
  },
  httpAccess: {
    type: 'enum',
    flag: 'http-access',
    env: 'TUNNEL_SERVER_HTTP_ACCESS',
    values: ['link', 'basic'],
    default: 'link',
    description:
      'who may use an http route not named in httpRouteAccess: link (a signed link from `link create`) or basic (a password from httpHtpasswdFile)',
  },
  httpHtpasswdFile: {
    type: 'file',
    flag: 'http-htpasswd-file',
    env: 'TUNNEL_SERVER_HTTP_HTPASSWD_FILE',
    description:
      'htpasswd file of user:bcrypt-hash lines for basic access (re-read when it changes); a route may name its own in httpRouteAccess',
  },
  httpRouteAccess: {
    type: 'access-list',
    flag: 'http-route-access',
    env: 'TUNNEL_SERVER_HTTP_ROUTE_ACCESS',
    pattern: ROUTE_LABEL_PATTERN,
    description:
      'per-route access, label=link, label=basic, label=basic:FILE or label=none (anyone, warned at start); other http routes use httpAccess',
  },
  httpIdleTimeoutMs: {
    type: 'duration-ms',
    flag: 'http-idle-timeout-ms',
    env: 'TUNNEL_SERVER_HTTP_IDLE_TIMEOUT_MS',
    default: '10m',
    min: 1,
    max: MAX_TIMER_MS,
    description: 'an http route connection (or WebSocket) with no bytes either way for this long is closed',
  },
  httpResponseTimeoutMs: {
    type: 'duration-ms',
    flag: 'http-response-timeout-ms',
    env: 'TUNNEL_SERVER_HTTP_RESPONSE_TIMEOUT_MS',
    default: '60s',
    min: 1,
    max: MAX_TIMER_MS,
    description:
      'how long a dashboard may take to start its response (then 504); streaming after that is bounded only by idleness',
  },
  probeIntervalMs: {
    type: 'duration-ms',
    flag: 'probe-interval-ms',
    env: 'TUNNEL_SERVER_PROBE_INTERVAL_MS',
    default: '30s',
    min: 0,
    max: MAX_TIMER_MS,
    description:
      "how often each route of each connected agent is probed through the data path (the agent connects to the route's target); 0 probes only on demand (POST /probe on the admin port)",
  },
  metricsClusterLabelLimit: {
    type: 'int',
    flag: 'metrics-cluster-label-limit',
    env: 'TUNNEL_SERVER_METRICS_CLUSTER_LABEL_LIMIT',
    default: 1000,
    min: 0,
    max: 1_000_000,
    description:
      'per-cluster metric series (a cluster label) are exported while agents of at most this many clusters are connected; above, they are left out',
  },
  adminListen: {
    type: 'host-port',
    flag: 'admin-listen',
    env: 'TUNNEL_SERVER_ADMIN_LISTEN',
    default: '127.0.0.1:9090',
    offValues: ['', 'off'],
    description: 'address of /metrics and the status page; off disables it',
  },
  serverId: {
    type: 'string',
    flag: 'server-id',
    env: 'TUNNEL_SERVER_SERVER_ID',
    pattern: ID_PATTERN,
    defaultText: '<hostname>-<6 hex digits>',
    description: 'id of this replica; agents keep one session to each distinct id',
  },
  serverCount: {
    type: 'int',
    flag: 'server-count',
    env: 'TUNNEL_SERVER_SERVER_COUNT',
    default: 1,
    min: 1,
    // The registered control message carries it, and its validator allows no more (control.ts).
    max: MAX_SERVER_COUNT,
    description: 'server replicas behind the load balancer; each agent keeps one session to every one',
  },
  keepaliveIntervalMs: {
    type: 'duration-ms',
    flag: 'keepalive-interval-ms',
    env: 'TUNNEL_SERVER_KEEPALIVE_INTERVAL_MS',
    default: '30s',
    min: 1,
    max: MAX_TIMER_MS,
    description: 'how often the server pings each agent session',
  },
  keepaliveTimeoutMs: {
    type: 'duration-ms',
    flag: 'keepalive-timeout-ms',
    env: 'TUNNEL_SERVER_KEEPALIVE_TIMEOUT_MS',
    default: '10s',
    min: 1,
    max: MAX_TIMER_MS,
    description: 'how long a ping may go unanswered before the session is closed as dead',
  },
  drainDelayMs: {
    type: 'duration-ms',
    flag: 'drain-delay-ms',
    env: 'TUNNEL_SERVER_DRAIN_DELAY_MS',
    default: '0',
    min: 0,
    max: MAX_TIMER_MS,
    description:
      'on SIGTERM, how long the server stays fully in service while /readyz answers 503, so the load balancer stops sending it connections before it closes its port and sends its agents away',
  },
  drainTimeoutMs: {
    type: 'duration-ms',
    flag: 'drain-timeout-ms',
    env: 'TUNNEL_SERVER_DRAIN_TIMEOUT_MS',
    default: '30s',
    min: 0,
    max: MAX_TIMER_MS,
    description: 'on SIGTERM, how long open streams may finish before they are reset',
  },
  maxAgents: {
    type: 'int',
    flag: 'max-agents',
    env: 'TUNNEL_SERVER_MAX_AGENTS',
    default: 10000,
    min: 1,
    description: 'most agent sessions held at once; further agents are refused',
  },
  ...logConfigKeys('TUNNEL_SERVER_'),
} as const satisfies ConfigSchema;

export interface ServerConfig {
  /** Absolute path of the YAML file read, if any. */
  readonly configFile: string | undefined;
  readonly listen: HostPort;
  /** Lower-case, no trailing dot. */
  readonly domain: string;
  /** Absolute. */
  readonly dataDir: string;
  /** Absolute paths; both set or both undefined (then a self-signed pair lives in dataDir). */
  readonly tlsCert: string | undefined;
  readonly tlsKey: string | undefined;
  readonly handshakeTimeoutMs: number;
  readonly agentWaitMs: number;
  readonly agentReplyTimeoutMs: number;
  /** The access of http routes that httpRouteAccess does not name. */
  readonly httpAccess: 'link' | 'basic';
  /** Absolute; required when any route's access is basic without a file of its own. */
  readonly httpHtpasswdFile: string | undefined;
  readonly httpRouteAccess: readonly RouteAccess[];
  readonly httpIdleTimeoutMs: number;
  readonly httpResponseTimeoutMs: number;
  readonly maxPendingConnections: number;
  /** 0: no per-address limit. */
  readonly maxPendingConnectionsPerAddress: number;
  readonly maxAgentsPerCluster: number;
  readonly maxSessionBufferedBytes: number;
  readonly maxTokenLifetimeMs: number;
  readonly tokenClockToleranceMs: number;
  /** Absolute paths, at least one; the default may not exist yet (created on first start). */
  readonly tokenPublicKey: readonly string[];
  /** Absolute path; the file may not exist. */
  readonly revokedFile: string | undefined;
  /** Absolute paths; both set or both undefined (then the data directory's, when serverCount is 1). */
  readonly routeCaCert: string | undefined;
  readonly routeCaKey: string | undefined;
  readonly routeCertLifetimeMs: number;
  /** Raw TCP routes: `name` is the route label, host:port where the server listens for it. */
  readonly tcpRoutes: readonly RouteTarget[];
  readonly metricsClusterLabelLimit: number;
  readonly probeIntervalMs: number;
  /** undefined: the admin port is off. */
  readonly adminListen: HostPort | undefined;
  readonly serverId: string;
  /** Replicas behind the load balancer, told to every agent in `registered` (1–64). */
  readonly serverCount: number;
  readonly keepaliveIntervalMs: number;
  readonly keepaliveTimeoutMs: number;
  readonly drainDelayMs: number;
  readonly drainTimeoutMs: number;
  readonly maxAgents: number;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
}

export type ResolveServerConfigInput = CliConfigInput;

function defaultServerId(hostname: string): string {
  const base = hostname
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 240);
  return `${base || 'server'}-${randomBytes(3).toString('hex')}`;
}

export function resolveServerConfig(input: ResolveServerConfigInput): Readonly<ServerConfig> {
  const schema = SERVER_CONFIG_SCHEMA;
  const parsed =
    input.argv === undefined
      ? { flags: input.flags ?? {}, problems: [] }
      : flagsFromArgv(new Command(), schema, input.argv);
  const resolved = resolveConfigValues(schema, {
    env: input.env,
    flags: parsed.flags,
    cwd: input.cwd ?? process.cwd(),
    parseYaml,
    configKey: 'configFile',
    computedDefaults: { serverId: defaultServerId(input.hostname ?? osHostname()) },
  });
  const { values: v, origins, failed } = resolved;
  const problems = [...parsed.problems, ...resolved.problems];
  const tlsBroken = failed.has('tlsCert') || failed.has('tlsKey');
  if (!tlsBroken && (v.tlsCert === undefined) !== (v.tlsKey === undefined)) {
    const [set, unset] =
      v.tlsCert !== undefined ? (['tlsCert', 'tlsKey'] as const) : (['tlsKey', 'tlsCert'] as const);
    problems.push(`${set} (${origins[set]}): set without ${unset}; give both or neither`);
  }
  const routeCaBroken = failed.has('routeCaCert') || failed.has('routeCaKey');
  if (!routeCaBroken && (v.routeCaCert === undefined) !== (v.routeCaKey === undefined)) {
    const [set, unset] =
      v.routeCaCert !== undefined
        ? (['routeCaCert', 'routeCaKey'] as const)
        : (['routeCaKey', 'routeCaCert'] as const);
    problems.push(`${set} (${origins[set]}): set without ${unset}; give both or neither`);
  }
  if (!failed.has('tcpRoutes')) problems.push(...tcpRouteProblems(v.tcpRoutes, v.listen, v.adminListen));
  if (!failed.has('httpHtpasswdFile') && v.httpHtpasswdFile === undefined) {
    if (v.httpAccess === 'basic' && !failed.has('httpAccess')) {
      problems.push(`httpAccess (${origins.httpAccess}): basic needs httpHtpasswdFile`);
    }
    for (const route of failed.has('httpRouteAccess') ? [] : v.httpRouteAccess) {
      if (route.access === 'basic' && route.htpasswdFile === undefined) {
        problems.push(
          `httpRouteAccess: ${route.name}=basic needs httpHtpasswdFile, or a file of its own (${route.name}=basic:FILE)`,
        );
      }
    }
  }
  throwIfConfigProblems(problems);
  const config: ServerConfig = {
    ...v,
    tokenPublicKey: v.tokenPublicKey.length > 0 ? v.tokenPublicKey : [join(v.dataDir, 'token-signing.pub')],
    serverId: v.serverId ?? defaultServerId(input.hostname ?? osHostname()),
  };
  return deepFreeze(config);
}

/**
 * A TCP route must be a label some cluster can own, and its port must not collide with the
 * public port, the admin port or another TCP route (the second listen would fail at start).
 */
function tcpRouteProblems(
  routes: readonly RouteTarget[],
  listen: HostPort,
  adminListen: HostPort | undefined,
): string[] {
  const problems: string[] = [];
  const taken: Array<{ hp: HostPort; owner: string }> = [{ hp: listen, owner: 'listen' }];
  if (adminListen) taken.push({ hp: adminListen, owner: 'adminListen' });
  for (const route of routes) {
    if (clusterOfLabel(route.name) === undefined) {
      problems.push(
        `tcpRoutes: ${route.name} is not a route label (a cluster's API server is cluster-<uid>, never cluster-<uid>-apiserver)`,
      );
    }
    const clash = taken.find((t) => clashes(t.hp, route));
    if (clash) {
      problems.push(
        `tcpRoutes: ${route.name} listens on ${formatHostPort(route)}, which ${clash.owner} uses already`,
      );
    }
    taken.push({ hp: route, owner: `tcpRoutes ${route.name}` });
  }
  return problems;
}

const ANY_ADDRESS: ReadonlySet<string> = new Set(['0.0.0.0', '::']);

/** Same port, and the same host or either one binding every interface (port 0 never clashes). */
function clashes(a: HostPort, b: HostPort): boolean {
  if (a.port === 0 || a.port !== b.port) return false;
  return a.host === b.host || ANY_ADDRESS.has(a.host) || ANY_ADDRESS.has(b.host);
}
