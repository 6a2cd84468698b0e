/**
 * One cluster behind the tunnel: a fake kube-apiserver for cluster `uid` (its certificate carries
 * the route hostname), an agent of that cluster registered with a tunnel server, and a kubeconfig
 * printed by `tunnel-server kubeconfig`.
 */
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

export interface ClusterTunnel {
  server: ServerHandle;
  agent: CliProcess;
  api: FakeApiServer;
  kubeconfig: string;
  tokenFile: string;
  dir: string;
}

export async function setupClusterTunnel(
  o: { uid?: string; server?: ServerHandle; agentEnv?: Record<string, string>; agentArgs?: string[] } = {},
): Promise<ClusterTunnel> {
  const uid = o.uid ?? 'u1';
  const dir = tempDir();
  const api = await startFakeApiServer({ hostnames: [`cluster-${uid}.proxy.localhost`] });
  defer(() => api.close());
  api.addPod({ name: `${uid}-web-1` });
  api.addPod({ name: `${uid}-web-2` });
  const server = o.server ?? (await startServer());
  const tokenFile = await writeTokenFile(dir, await createToken(server.dataDir, uid), `${uid}.token`);
  const agentOptions: AgentOptions = {
    server,
    tokenFile,
    routes: [`apiserver=127.0.0.1:${api.port}`],
    agentId: `agent-${uid}`,
    env: o.agentEnv,
    args: o.agentArgs,
  };
  const agent = await startAgent(agentOptions);
  const user = await api.issueClientCert(`alice-${uid}`, ['system:masters']);
  const kubeconfig = await tunnelKubeconfig(dir, {
    cluster: uid,
    port: server.port,
    caPem: api.caCertPem,
    certPem: user.certPem,
    keyPem: user.keyPem,
  });
  return { server, agent, api, kubeconfig, tokenFile, dir };
}
