/**
 * tunnel-client's configuration: defaults < `--config` YAML < TUNNEL_CLIENT_* env < flags, every
 * problem reported in one TUN_ERR_CONFIG, resolved once into a deeply frozen ClientConfig.
 * Only this file and bin.ts read argv/env, so the egress proxy variables are resolved here too.
 */
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname as osHostname } from 'node:os';
import { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { ID_PATTERN } from '@cluster-tunnel/protocol';
import {
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
  RouteTarget,
} from '@cluster-tunnel/config';

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

// Timer keys share their bounds; drainTimeoutMs alone may be 0 (exit without waiting).
const timer = (flag: string, env: string, dflt: string, description: string) =>
  ({ type: 'duration-ms', flag, env, default: dflt, min: 1, max: MAX_TIMER_MS, description }) as const;

export const CLIENT_CONFIG_SCHEMA = {
  configFile: {
    type: 'file',
    flag: 'config',
    env: 'TUNNEL_CLIENT_CONFIG',
    inFile: false,
    description: 'YAML file with any of the keys below (camelCase); flags and env override it',
  },
  server: {
    type: 'url',
    flag: 'server',
    env: 'TUNNEL_CLIENT_SERVER',
    protocols: ['wss:', 'ws:'],
    required: true,
    description: 'WebSocket URL of the tunnel server (wss; ws only to 127.0.0.1 or localhost)',
  },
  token: {
    type: 'string',
    flag: 'token',
    env: 'TUNNEL_CLIENT_TOKEN',
    secret: true,
    description: 'agent token (prefer tokenFile or the env: flags are visible in ps); never logged',
  },
  tokenFile: {
    type: 'file',
    flag: 'token-file',
    env: 'TUNNEL_CLIENT_TOKEN_FILE',
    description: 'file holding the agent token, read again on every connect (a mounted Secret)',
  },
  caFile: {
    type: 'file',
    flag: 'ca-file',
    env: 'TUNNEL_CLIENT_CA_FILE',
    description: 'PEM CA certificate(s) to trust for the server, besides the system roots',
  },
  serverName: {
    type: 'dns-name',
    flag: 'server-name',
    env: 'TUNNEL_CLIENT_SERVER_NAME',
    description: 'TLS server name (SNI and certificate check) when it differs from the URL host',
  },
  route: {
    type: 'route-list',
    flag: 'route',
    env: 'TUNNEL_CLIENT_ROUTE',
    required: true,
    defaultText: 'apiserver=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT',
    urlTargets: true,
    description:
      'route the agent serves: name=host:port[,mode=agent-tls[,ca=FILE,serverName=NAME,insecure]], or an http route name=http(s)://host[:port][,ca=FILE,serverName=NAME,insecure,hostHeader=NAME]; the in-cluster apiserver by default',
  },
  agentId: {
    type: 'string',
    flag: 'agent-id',
    env: 'TUNNEL_CLIENT_AGENT_ID',
    pattern: ID_PATTERN,
    defaultText: '<hostname>',
    description: 'id of this agent in server logs and metrics (the pod name in a cluster)',
  },
  healthListen: {
    type: 'host-port',
    flag: 'health-listen',
    env: 'TUNNEL_CLIENT_HEALTH_LISTEN',
    default: '127.0.0.1:8081',
    offValues: ['', 'off'],
    description: 'address of /healthz and /readyz for kubelet probes; off disables it',
  },
  drainTimeoutMs: {
    ...timer(
      'drain-timeout-ms',
      'TUNNEL_CLIENT_DRAIN_TIMEOUT_MS',
      '30s',
      'on SIGTERM, how long open streams may finish before they are reset',
    ),
    min: 0,
  },
  backoffInitialMs: timer(
    'backoff-initial-ms',
    'TUNNEL_CLIENT_BACKOFF_INITIAL_MS',
    '500ms',
    'first reconnect delay; it doubles (with jitter) after each failure',
  ),
  backoffMaxMs: timer(
    'backoff-max-ms',
    'TUNNEL_CLIENT_BACKOFF_MAX_MS',
    '30s',
    'ceiling of the reconnect delay',
  ),
  healthyResetMs: timer(
    'healthy-reset-ms',
    'TUNNEL_CLIENT_HEALTHY_RESET_MS',
    '60s',
    'a session that lived this long resets the reconnect delay to backoffInitialMs',
  ),
  authRetryMs: timer(
    'auth-retry-ms',
    'TUNNEL_CLIENT_AUTH_RETRY_MS',
    '60s',
    'slow retry delay after the server refuses the token (401 or 403)',
  ),
  keepaliveIntervalMs: timer(
    'keepalive-interval-ms',
    'TUNNEL_CLIENT_KEEPALIVE_INTERVAL_MS',
    '15s',
    'how often the agent pings the server',
  ),
  keepaliveTimeoutMs: timer(
    'keepalive-timeout-ms',
    'TUNNEL_CLIENT_KEEPALIVE_TIMEOUT_MS',
    '10s',
    'how long a ping may go unanswered before the agent reconnects',
  ),
  targetSpareConnections: {
    type: 'int',
    flag: 'target-spare-connections',
    env: 'TUNNEL_CLIENT_TARGET_SPARE_CONNECTIONS',
    default: 1,
    min: 0,
    max: 16,
    description:
      'idle connections kept open to a route target while the route is in use, so a new user connection skips the TCP connect; 0 disables',
  },
  targetSpareIdleMs: timer(
    'target-spare-idle-ms',
    'TUNNEL_CLIENT_TARGET_SPARE_IDLE_MS',
    '5s',
    'a spare target connection unused this long is closed (keep it below the target’s own idle or handshake timeout)',
  ),
  ...logConfigKeys('TUNNEL_CLIENT_'),
} as const satisfies ConfigSchema;

/** Egress proxy variables, most specific first (an HTTP CONNECT proxy also carries wss). */
export const PROXY_ENV = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'] as const;
export const NO_PROXY_ENV = ['NO_PROXY', 'no_proxy'] as const;

export interface ClientConfig {
  /** Absolute path of the YAML file read, if any. */
  readonly configFile: string | undefined;
  /** URL href, wss: (or ws: to a loopback host). */
  readonly server: string;
  /** Exactly one of token and tokenFile is set. */
  readonly token: string | undefined;
  /** Absolute path; the agent reads it on each connect so a rotated Secret is picked up. */
  readonly tokenFile: string | undefined;
  readonly caFile: string | undefined;
  readonly serverName: string | undefined;
  /** At least one, names unique. */
  readonly route: readonly RouteTarget[];
  readonly agentId: string;
  /** undefined: the health port is off. */
  readonly healthListen: HostPort | undefined;
  readonly drainTimeoutMs: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly healthyResetMs: number;
  readonly authRetryMs: number;
  readonly keepaliveIntervalMs: number;
  readonly keepaliveTimeoutMs: number;
  /** Spares per route target while the route is in use (target-dialer.ts); 0: none. */
  readonly targetSpareConnections: number;
  readonly targetSpareIdleMs: number;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  /** From HTTPS_PROXY / https_proxy / HTTP_PROXY / http_proxy; may hold credentials: log it redacted. */
  readonly proxyUrl: string | undefined;
  /** From NO_PROXY / no_proxy: lower-cased entries, as written (the dialer matches them). */
  readonly noProxy: readonly string[];
}

export type ResolveClientConfigInput = CliConfigInput & {
  /** Where a pod finds its cluster's CA (tests point it elsewhere). */
  serviceAccountCaFile?: string;
};

/** The cluster CA in a pod: the service account mount, or the agent-tls component's (deploy/). */
export const SERVICE_ACCOUNT_CA_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt';
/** The name every API server certificate carries for its in-cluster Service. */
export const IN_CLUSTER_API_SERVER_NAME = 'kubernetes.default.svc';
const IN_CLUSTER_API_HOST = /^kubernetes(\.default(\.svc(\.cluster\.local)?)?)?$/;

/**
 * In a pod, an agent-tls route to the cluster's own API server (its Service name or
 * KUBERNETES_SERVICE_HOST) verifies it as in-cluster clients do: against the cluster CA, for
 * kubernetes.default.svc when the target is an address. Routes elsewhere are left as written.
 */
function inClusterAgentTls(
  routes: readonly RouteTarget[],
  env: ResolveClientConfigInput['env'],
  caFile: string,
  problems: string[],
): RouteTarget[] {
  const apiHost = env.KUBERNETES_SERVICE_HOST?.trim().toLowerCase();
  if (!apiHost) return [...routes];
  return routes.map((r) => {
    if (r.mode !== 'agent-tls' || (r.host !== apiHost && !IN_CLUSTER_API_HOST.test(r.host))) return r;
    const filled: { -readonly [K in keyof RouteTarget]: RouteTarget[K] } = { ...r };
    if (r.ca === undefined && !r.insecure) {
      if (existsSync(caFile)) filled.ca = caFile;
      else {
        problems.push(
          `route ${r.name}: mode=agent-tls needs ca=FILE; the cluster CA ${caFile} is not mounted (deploy/client/components/agent-tls mounts it)`,
        );
      }
    }
    if (r.serverName === undefined && isIP(r.host) !== 0) filled.serverName = IN_CLUSTER_API_SERVER_NAME;
    return filled;
  });
}

/** In a pod, kubelet sets KUBERNETES_SERVICE_HOST/PORT: serve the apiserver unless told otherwise. */
function inClusterRoute(env: ResolveClientConfigInput['env']): string | undefined {
  const host = env.KUBERNETES_SERVICE_HOST?.trim();
  const port = env.KUBERNETES_SERVICE_PORT?.trim();
  if (!host || !port) return undefined;
  return `apiserver=${host.includes(':') ? `[${host}]` : host}:${port}`;
}

function resolveProxy(env: ResolveClientConfigInput['env'], problems: string[]) {
  const name = PROXY_ENV.find((n) => (env[n] ?? '').trim() !== '');
  let proxyUrl: string | undefined;
  if (name !== undefined) {
    const raw = (env[name] ?? '').trim();
    // curl's habit: a bare host:port means an http:// proxy.
    const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
    try {
      const url = new URL(withScheme);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme');
      proxyUrl = url.href;
    } catch {
      // The value may carry credentials: name the variable, never echo it.
      problems.push(`proxyUrl (env ${name}): expected an http:// or https:// proxy URL`);
    }
  }
  const noProxyRaw = NO_PROXY_ENV.map((n) => env[n]).find((v) => v !== undefined) ?? '';
  const noProxy = noProxyRaw
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== '');
  return { proxyUrl, noProxy };
}

export function resolveClientConfig(input: ResolveClientConfigInput): Readonly<ClientConfig> {
  const schema = CLIENT_CONFIG_SCHEMA;
  const hostname = input.hostname ?? osHostname();
  const parsed =
    input.argv === undefined
      ? { flags: input.flags ?? {}, problems: [] }
      : flagsFromArgv(new Command(), schema, input.argv);
  const kubeRoute = inClusterRoute(input.env);
  const resolved = resolveConfigValues(schema, {
    env: input.env,
    flags: parsed.flags,
    cwd: input.cwd ?? process.cwd(),
    parseYaml,
    configKey: 'configFile',
    computedDefaults: { agentId: hostname, ...(kubeRoute === undefined ? {} : { route: kubeRoute }) },
  });
  const { values: v, origins, failed } = resolved;
  const problems = [...parsed.problems, ...resolved.problems];

  if (!failed.has('server') && v.server !== undefined) {
    const url = new URL(v.server);
    if (url.protocol === 'ws:' && !LOOPBACK_HOSTS.has(url.hostname)) {
      problems.push(
        `server (${origins.server}): ws:// is allowed only to 127.0.0.1 or localhost; use wss://`,
      );
    }
  }
  if (!failed.has('token') && !failed.has('tokenFile')) {
    if (v.token !== undefined && v.tokenFile !== undefined) {
      problems.push(
        `token (${origins.token}): set together with tokenFile (${origins.tokenFile}); set exactly one`,
      );
    } else if (v.token === undefined && v.tokenFile === undefined) {
      problems.push(
        'token (not set): set exactly one of token (--token, TUNNEL_CLIENT_TOKEN) or tokenFile (--token-file, TUNNEL_CLIENT_TOKEN_FILE)',
      );
    }
  }
  const failedBackoff = failed.has('backoffInitialMs') || failed.has('backoffMaxMs');
  if (!failedBackoff && v.backoffInitialMs > v.backoffMaxMs) {
    problems.push(
      `backoffInitialMs (${origins.backoffInitialMs}): ${v.backoffInitialMs}ms exceeds backoffMaxMs (${v.backoffMaxMs}ms)`,
    );
  }
  const proxy = resolveProxy(input.env, problems);
  const route = failed.has('route')
    ? v.route
    : inClusterAgentTls(v.route, input.env, input.serviceAccountCaFile ?? SERVICE_ACCOUNT_CA_FILE, problems);
  throwIfConfigProblems(problems);

  const config: ClientConfig = {
    ...v,
    route,
    server: v.server,
    agentId: v.agentId ?? hostname,
    ...proxy,
  };
  return deepFreeze(config);
}
