/**
 * Route hostnames: `cluster-<uid>` for a cluster's API server and `cluster-<uid>-<name>` for its
 * other routes, one DNS label under the server domain so one wildcard certificate covers all.
 * `cluster-` + 32 + `-` + 22 = 63 bytes, the DNS label limit. Cluster ids have no '-', so a label names exactly one owner: cluster `a` can never claim
 * `cluster-a-b` as the API server of a cluster `a-b` (there is no such cluster).
 */
import { TunnelError } from '../errors.js';

export const CLUSTER_ID_PATTERN = /^[a-z0-9]{1,32}$/;
export const ROUTE_NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?$/;
/** Any route label by shape; clusterOfLabel() also refuses `cluster-<uid>-apiserver`. */
export const ROUTE_LABEL_PATTERN = /^cluster-[a-z0-9]{1,32}(-[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?)?$/;
/** The route published as the bare `cluster-<uid>` label. */
export const API_SERVER_ROUTE = 'apiserver';
const LABEL_PREFIX = 'cluster-';

export function isValidClusterId(clusterId: string): boolean {
  return CLUSTER_ID_PATTERN.test(clusterId);
}

/** The hostname label a cluster's route is published under. */
export function routeLabel(clusterId: string, routeName: string): string {
  if (!isValidClusterId(clusterId)) {
    throw new TunnelError('TUN_ERR_CONFIG', `invalid cluster id ${JSON.stringify(clusterId)}`);
  }
  if (!ROUTE_NAME_PATTERN.test(routeName)) {
    throw new TunnelError('TUN_ERR_CONFIG', `invalid route name ${JSON.stringify(routeName)}`);
  }
  return routeName === API_SERVER_ROUTE
    ? `${LABEL_PREFIX}${clusterId}`
    : `${LABEL_PREFIX}${clusterId}-${routeName}`;
}

/** The cluster a route label belongs to, or undefined when the label is not a route label. */
export function clusterOfLabel(label: string): string | undefined {
  if (!label.startsWith(LABEL_PREFIX)) return undefined;
  const rest = label.slice(LABEL_PREFIX.length);
  const dash = rest.indexOf('-');
  const clusterId = dash === -1 ? rest : rest.slice(0, dash);
  const routeName = dash === -1 ? API_SERVER_ROUTE : rest.slice(dash + 1);
  if (!isValidClusterId(clusterId) || !ROUTE_NAME_PATTERN.test(routeName)) return undefined;
  // `cluster-<uid>-apiserver` is never published: the API server is the bare label.
  if (dash !== -1 && routeName === API_SERVER_ROUTE) return undefined;
  return clusterId;
}

/**
 * The route label a TLS server name asks for: `cluster-u1.proxy.localhost` → `cluster-u1`.
 * Exactly one label under the domain, or undefined (the server answers `unrecognized_name`).
 */
export function routeLabelOfHost(serverName: string, domain: string): string | undefined {
  const suffix = `.${domain}`;
  if (!serverName.endsWith(suffix)) return undefined;
  const label = serverName.slice(0, -suffix.length);
  return label.length > 0 && !label.includes('.') ? label : undefined;
}
