/**
 * The agent's own routes: hostname label → configured target. The server names a label, never
 * an address, and a label that is not in this table is refused: the agent dials only what its
 * operator configured.
 */
import { routeLabel } from '@cluster-tunnel/protocol';
import { formatHostPort } from '@cluster-tunnel/config';
import type { RouteTarget } from '@cluster-tunnel/config';

export interface RouteEntry {
  /** Route name from the configuration (`apiserver`, `dashboard`). */
  readonly name: string;
  /** Hostname label the server publishes it under (`cluster-u1`, `cluster-u1-dashboard`). */
  readonly label: string;
  readonly host: string;
  readonly port: number;
  /** `host:port`, for logs. */
  readonly target: string;
}

export class RouteTable {
  readonly clusterId: string;
  private readonly byLabel: ReadonlyMap<string, RouteEntry>;

  /** Throws TUN_ERR_CONFIG when the cluster id or a route name cannot form a label. */
  constructor(clusterId: string, routes: readonly RouteTarget[]) {
    this.clusterId = clusterId;
    const entries = routes.map((r): RouteEntry => {
      const label = routeLabel(clusterId, r.name);
      return Object.freeze({ name: r.name, label, host: r.host, port: r.port, target: formatHostPort(r) });
    });
    this.byLabel = new Map(entries.map((e) => [e.label, e]));
  }

  /** The labels to register, in configuration order. */
  get labels(): string[] {
    return [...this.byLabel.keys()];
  }

  lookup(label: string): RouteEntry | undefined {
    return this.byLabel.get(label);
  }
}
