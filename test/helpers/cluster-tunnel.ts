/**
 * One cluster behind the tunnel: a fake kube-apiserver for cluster `uid`, an agent of that
 * cluster registered with a tunnel server, and a kubeconfig printed by `tunnel-server kubeconfig`.
 *
 * - passthrough (the default): the API server's certificate carries the route hostname, and the
 *   kubeconfig holds a client certificate (TLS ends at the API server);
 * - agent-tls: the API server's certificate does not carry it (a managed cluster's), the agent
 *   verifies it as `kubernetes.default.svc` against its CA, and the kubeconfig trusts the route CA
 *   and holds a bearer token (TLS ends at the agent). Resolves once the agent holds its route
 *   certificate.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { defer } from './cleanup.js';
import { startFakeApiServer, type FakeApiServer } from './fake-apiserver.js';
import {
  createToken,
  startAgent,
  startServer,
  tunnelKubeconfig,
  writeTokenFile,
  type AgentOptions,
  type CliProcess,
  type ServerHandle,
} from './tunnel.js';
import { tempDir } from './temp-dir.js';

export const BEARER_TOKEN = 'fake-bearer-token-0123456789';

export interface ClusterTunnel {
  mode: 'passthrough' | 'agent-tls';
  /** The identity the API server sees for this kubeconfig's requests. */
  identity: string;
  server: ServerHandle;
  agent: CliProcess;
  api: FakeApiServer;
  kubeconfig: string;
  tokenFile: string;
  dir: string;
}

export async function setupClusterTunnel(
  o: {
    uid?: string;
    server?: ServerHandle;
    agentEnv?: Record<string, string>;
    agentArgs?: string[];
    mode?: 'passthrough' | 'agent-tls';
  } = {},
): Promise<ClusterTunnel> {
  const uid = o.uid ?? 'u1';
  const mode = o.mode ?? 'passthrough';
  const dir = tempDir();
  const api = await startFakeApiServer({
    hostnames: mode === 'passthrough' ? [`cluster-${uid}.proxy.localhost`] : [],
    bearerToken: BEARER_TOKEN,
    // agent-tls carries the user's ALPN offer to the API server: HTTP/2, as a real one speaks.
    http2: mode === 'agent-tls',
  });
  defer(() => api.close());
  api.addPod({ name: `${uid}-web-1` });
  api.addPod({ name: `${uid}-web-2` });
  const server = o.server ?? (await startServer());
  const tokenFile = await writeTokenFile(dir, await createToken(server.dataDir, uid), `${uid}.token`);
  const apiCaFile = join(dir, `${uid}-apiserver-ca.pem`);
  await writeFile(apiCaFile, api.caCertPem);
  const route =
    mode === 'passthrough'
      ? `apiserver=127.0.0.1:${api.port}`
      : `apiserver=127.0.0.1:${api.port},mode=agent-tls,ca=${apiCaFile},serverName=kubernetes.default.svc`;
  const agentOptions: AgentOptions = {
    server,
    tokenFile,
    routes: [route],
    agentId: `agent-${uid}`,
    env: o.agentEnv,
    args: o.agentArgs,
  };
  const agent = await startAgent(agentOptions);
  if (mode === 'agent-tls') {
    await agent.waitForLog((l) => l.msg === 'route certificate installed');
    const kubeconfig = await tunnelKubeconfig(dir, {
      cluster: uid,
      port: server.port,
      mode,
      dataDir: server.dataDir,
      token: BEARER_TOKEN,
    });
    return { mode, identity: `token:${BEARER_TOKEN}`, server, agent, api, kubeconfig, tokenFile, dir };
  }
  const user = await api.issueClientCert(`alice-${uid}`, ['system:masters']);
  const kubeconfig = await tunnelKubeconfig(dir, {
    cluster: uid,
    port: server.port,
    caPem: api.caCertPem,
    certPem: user.certPem,
    keyPem: user.keyPem,
  });
  return { mode, identity: `alice-${uid}`, server, agent, api, kubeconfig, tokenFile, dir };
}
