/**
 * The agent's own routes: hostname label → configured target. The server names a label, never
 * an address, and a label that is not in this table is refused: the agent dials only what its
 * operator configured. A URL target makes an http route: the server speaks HTTP to the user and
 * sends the agent plain HTTP bytes; for an `https://` target the agent originates TLS,
 * verifying the target as configured. An agent-tls route (`mode=agent-tls`) is a host:port
 * target the agent reaches over TLS, after ending the user's TLS with its route certificate.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { TunnelError, routeLabel } from '@cluster-tunnel/protocol';
import { formatHostPort } from '@cluster-tunnel/config';
import type { RouteTarget } from '@cluster-tunnel/config';

/** How the agent opens TLS to an `https://` target. */
export interface TargetTls {
  /** PEM of `ca=FILE`; undefined means the system roots. */
  readonly ca: string | undefined;
  /** SNI and the name the certificate must carry; undefined for an IP target without serverName. */
  readonly servername: string | undefined;
  /** False only for `insecure`. */
  readonly rejectUnauthorized: boolean;
}

export interface RouteEntry {
  /** Route name from the configuration (`apiserver`, `dashboard`). */
  readonly name: string;
  /** Hostname label the server publishes it under (`cluster-u1`, `cluster-u1-dashboard`). */
  readonly label: string;
  /**
   * The route mode the server serves it with on the public port. For agent-tls the agent ends
   * the user's TLS itself (agent-tls.ts) and `tls` says how it opens TLS to the target.
   */
  readonly mode: 'passthrough' | 'http' | 'agent-tls';
  readonly host: string;
  readonly port: number;
  /** Set for an `https://` target and for agent-tls. */
  readonly tls: TargetTls | undefined;
  /** For an http route: the Host the server sends the target instead of the user's. */
  readonly hostHeader: string | undefined;
  /** `host:port`, or the target URL for an http route, for logs. */
  readonly target: string;
}

/** A route's target as logs and the dialer name it: `host:port`, or the URL of an http route. */
export function targetOf(r: RouteTarget): string {
  const address = formatHostPort(r);
  return r.scheme === undefined ? address : `${r.scheme}://${address}`;
}

export class RouteTable {
  readonly clusterId: string;
  private readonly byLabel: ReadonlyMap<string, RouteEntry>;

  /**
   * Throws TUN_ERR_CONFIG when the cluster id or a route name cannot form a label, or a route's
   * CA file cannot be read (it is read here, on every dial, so a rotated CA is picked up).
   * `built`: entries of another table, kept as they are (passthroughOnly).
   */
  constructor(clusterId: string, routes: readonly RouteTarget[], built: readonly RouteEntry[] = []) {
    this.clusterId = clusterId;
    const entries = [
      ...built,
      ...routes.map((r): RouteEntry => {
        const label = routeLabel(clusterId, r.name);
        return Object.freeze({
          name: r.name,
          label,
          mode: r.scheme !== undefined ? 'http' : (r.mode ?? 'passthrough'),
          host: r.host,
          port: r.port,
          tls: r.scheme === 'https' || r.mode === 'agent-tls' ? targetTls(r) : undefined,
          hostHeader: r.hostHeader,
          target: targetOf(r),
        });
      }),
    ];
    this.byLabel = new Map(entries.map((e) => [e.label, e]));
  }

  /** Labels of the agent-tls routes: the names the agent's route certificate is for. */
  get agentTlsLabels(): string[] {
    return [...this.byLabel.values()].filter((e) => e.mode === 'agent-tls').map((e) => e.label);
  }

  /** The labels to register, in configuration order. */
  get labels(): string[] {
    return [...this.byLabel.keys()];
  }

  /** `routeModes` for `register`: the labels not served as passthrough, with their mode. */
  get modes(): Record<string, string> {
    const modes: Record<string, string> = {};
    for (const e of this.byLabel.values()) if (e.mode !== 'passthrough') modes[e.label] = e.mode;
    return modes;
  }

  /**
   * The routes a server without `route-modes` may be given: it would treat every label as
   * passthrough and send an http route's users' TLS to a plain-HTTP target.
   */
  passthroughOnly(): RouteTable {
    return new RouteTable(
      this.clusterId,
      [],
      [...this.byLabel.values()].filter((e) => e.mode === 'passthrough'),
    );
  }

  /** `hostHeaders` for `register`: http routes with a `hostHeader` option. */
  get hostHeaders(): Record<string, string> {
    const headers: Record<string, string> = {};
    for (const e of this.byLabel.values()) if (e.hostHeader !== undefined) headers[e.label] = e.hostHeader;
    return headers;
  }

  lookup(label: string): RouteEntry | undefined {
    return this.byLabel.get(label);
  }
}

function targetTls(r: RouteTarget): TargetTls {
  let ca: string | undefined;
  if (r.ca !== undefined) {
    try {
      ca = readFileSync(r.ca, 'utf8');
    } catch (cause) {
      throw new TunnelError('TUN_ERR_CONFIG', `route ${r.name}: cannot read ca ${r.ca}`, { cause });
    }
  }
  return {
    ca,
    servername: r.serverName ?? (isIP(r.host) === 0 ? r.host : undefined),
    rejectUnauthorized: r.insecure !== true,
  };
}
