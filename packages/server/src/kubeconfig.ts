import { stringify } from 'yaml';
import { TunnelError, isValidClusterId, routeLabel, API_SERVER_ROUTE } from '@cluster-tunnel/protocol';

export interface KubeconfigOptions {
  clusterId: string;
  domain: string;
  /** Public port of the tunnel server (the route URL's port). */
  port: number;
  /**
   * PEM of the CA the user's TLS is checked against: the API server's (passthrough: TLS ends
   * there), or the route CA (agent-tls: TLS ends at the agent).
   */
  caPem: string;
  /** The route's mode; agent-tls cannot carry a client certificate (TLS ends at the agent). */
  mode?: 'passthrough' | 'agent-tls';
  clientCertPem?: string;
  clientKeyPem?: string;
  token?: string;
  /** A client-go exec credential plugin (OIDC, cloud IAM): its bearer tokens pass any mode. */
  exec?: { command: string; args: readonly string[]; apiVersion: string };
  /** Overrides `https://cluster-<uid>.<domain>:<port>`; with an IP or another name, tls-server-name keeps SNI right. */
  serverUrl?: string;
}

/** A kubeconfig whose server is the cluster's route through the tunnel. */
export function buildKubeconfig(o: KubeconfigOptions): string {
  if (!isValidClusterId(o.clusterId)) {
    throw new TunnelError('TUN_ERR_CONFIG', `invalid cluster id ${JSON.stringify(o.clusterId)}`);
  }
  const hasCert = o.clientCertPem !== undefined || o.clientKeyPem !== undefined;
  if (hasCert && (o.clientCertPem === undefined || o.clientKeyPem === undefined)) {
    throw new TunnelError('TUN_ERR_CONFIG', 'give both --client-cert and --client-key');
  }
  const credentials = [hasCert, o.token !== undefined, o.exec !== undefined].filter(Boolean).length;
  if (credentials > 1) {
    throw new TunnelError('TUN_ERR_CONFIG', 'give one of a client certificate, a token or an exec command');
  }
  if (hasCert && o.mode === 'agent-tls') {
    throw new TunnelError(
      'TUN_ERR_CONFIG',
      'a client certificate cannot reach the API server through agent-tls (TLS ends at the agent): use a token or an exec command',
    );
  }
  const routeHost = `${routeLabel(o.clusterId, API_SERVER_ROUTE)}.${o.domain}`;
  const defaultUrl = `https://${routeHost}:${o.port}`;
  const server = o.serverUrl ?? defaultUrl;
  const serverHost = new URL(server).hostname;
  const name = `cluster-${o.clusterId}`;
  const cluster: Record<string, string> = {
    server,
    'certificate-authority-data': b64(o.caPem),
  };
  // SNI must still name the route when the URL does not (e.g. https://127.0.0.1:8443: no DNS needed).
  if (serverHost !== routeHost) cluster['tls-server-name'] = routeHost;
  const user: Record<string, unknown> = {};
  if (o.clientCertPem && o.clientKeyPem) {
    user['client-certificate-data'] = b64(o.clientCertPem);
    user['client-key-data'] = b64(o.clientKeyPem);
  }
  if (o.token) user.token = o.token;
  const exec = o.exec && {
    apiVersion: o.exec.apiVersion,
    command: o.exec.command,
    ...(o.exec.args.length > 0 ? { args: [...o.exec.args] } : {}),
    interactiveMode: 'IfAvailable',
  };
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name, cluster }],
    users: [{ name: `${name}-user`, user: exec ? { ...user, exec } : user }],
    contexts: [{ name, context: { cluster: name, user: `${name}-user` } }],
    'current-context': name,
    preferences: {},
  });
}

function b64(pem: string): string {
  return Buffer.from(pem, 'utf8').toString('base64');
}
