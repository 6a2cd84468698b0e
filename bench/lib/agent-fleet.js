#!/usr/bin/env node
/**
 * Load generator for S9: N real agents (TunnelAgent from packages/client/dist, with its connect
 * slots, backoff, jitter and GoAway handling) in this one process, each for its own cluster
 * fleet<n> with its own token (minted in-process with the data directory's signing key), all
 * dialing one tunnel-server. Forked with IPC:
 *   → { type: 'ready', ok, ms } once every agent has registered (or after --timeout-ms);
 *   ← { type: 'close' }: stop every agent, then exit.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import fs from 'node:fs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { TunnelAgent, resolveClientConfig } = await import(path.join(ROOT, 'packages/client/dist/index.js'));
const { createToken } = await import(path.join(ROOT, 'packages/server/dist/token-issuer.js'));
const { default: pino } = await import(path.join(ROOT, 'node_modules/pino/pino.js'));

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'data-dir': { type: 'string' },
    count: { type: 'string', default: '100' },
    'timeout-ms': { type: 'string', default: '60000' },
  },
});
const count = Number(values.count);
const dataDir = values['data-dir'];
const privateKeyPem = fs.readFileSync(path.join(dataDir, 'token-signing.key'), 'utf8');
const logger = pino({ level: 'silent' });
const agents = [];
let registered = 0;

for (let i = 0; i < count; i++) {
  const token = await createToken({
    privateKeyPem,
    clusterId: `fleet${i}`,
    audience: 'proxy.localhost',
    ttlMs: 3_600_000,
  });
  const config = resolveClientConfig({
    argv: [
      ...['--server', `wss://127.0.0.1:${values.port}/connect`, '--ca-file', path.join(dataDir, 'ca.crt')],
      ...['--route', 'apiserver=127.0.0.1:1', '--agent-id', `fleet-agent-${i}`, '--health-listen', 'off'],
    ],
    env: { TUNNEL_CLIENT_TOKEN: token },
    cwd: dataDir,
    hostname: `fleet-${i}`,
  });
  const agent = new TunnelAgent(config, { logger });
  agent.once('registered', () => registered++);
  agents.push(agent);
}
const started = performance.now();
await Promise.all(agents.map((a) => a.start()));
const deadline = Date.now() + Number(values['timeout-ms']);
while (registered < count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
process.send({ type: 'ready', ok: registered, ms: performance.now() - started });

process.on('message', (message) => {
  if (message.type === 'close') {
    for (const a of agents) a.destroy();
    process.exit(0);
  }
});
