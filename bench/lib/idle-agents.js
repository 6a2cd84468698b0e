#!/usr/bin/env node
/**
 * Load generator for S5: opens N idle agent sessions to one tunnel-server from this one process,
 * each as a real agent does it (WebSocket over TLS to /connect with its own token, a yamux
 * session, the control stream, `register`, `registered`), each for its own cluster idle<n>
 * (tokens minted in-process with the data directory's signing key instead of N CLI calls).
 * With --plain it opens bare WebSocket connections instead (no token, no yamux): the reference
 * for what WebSocket+TLS alone costs (bench/lib/wss-server.js).
 * Forked with IPC: reports { type: 'ready', ok, errors, firstError, ms } once all have
 * registered (or failed), then holds them until told { type: 'close' }.
 */
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { WebSocket } from 'ws';
import { pool } from './pool.js';
import { sendUpgrade } from './upgrade.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const {
  CONTROL_PROTOCOL_VERSION,
  ControlChannel,
  YamuxSession,
  checkUpgradeResponse,
  createWebSocketDuplex,
  createWebSocketKey,
  routeLabel,
  upgradeRequestHeaders,
} = await import(path.join(ROOT, 'packages/protocol/dist/index.js'));
const { createToken } = await import(path.join(ROOT, 'packages/server/dist/token-issuer.js'));

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'data-dir': { type: 'string' },
    count: { type: 'string' },
    concurrency: { type: 'string', default: '64' },
    plain: { type: 'boolean', default: false },
    'ca-file': { type: 'string' },
    servername: { type: 'string' },
  },
});
const port = Number(values.port);
const count = Number(values.count);
const concurrency = Number(values.concurrency);
const ca = fs.readFileSync(values['ca-file'] ?? path.join(values['data-dir'], 'ca.crt'), 'utf8');
const privateKeyPem = values.plain
  ? ''
  : fs.readFileSync(path.join(values['data-dir'], 'token-signing.key'), 'utf8');
const sockets = [];
// One TLS context for all connections (`ca` alone would build one per connection).
const secureContext = tls.createSecureContext({ ca });

async function openPlain() {
  const ws = new WebSocket(`wss://127.0.0.1:${port}/`, {
    secureContext,
    servername: values.servername,
    perMessageDeflate: false,
    handshakeTimeout: TIMEOUT_MS,
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.on('error', () => undefined);
  sockets.push(ws);
}
const TIMEOUT_MS = 30_000;
const sessions = [];

async function openAgent(i) {
  const clusterId = `idle${i}`;
  // The audience is the server's domain; bench servers run on the default (bench/lib/tunnel.js).
  const token = await createToken({
    privateKeyPem,
    clusterId,
    audience: 'proxy.localhost',
    ttlMs: 3_600_000,
  });
  // The agent's handshake (packages/client/src/dialer.ts), with the shared TLS context.
  const key = createWebSocketKey();
  const req = https.request(`https://127.0.0.1:${port}/connect`, {
    headers: { ...upgradeRequestHeaders(key), Authorization: `Bearer ${token}` },
    secureContext,
    agent: false,
    timeout: TIMEOUT_MS,
  });
  req.once('timeout', () => req.destroy(new Error('upgrade timed out')));
  const { socket, head } = await sendUpgrade(req, key, checkUpgradeResponse);
  // No keepalive from this side: the server still pings every session (its own keepalive).
  const duplex = createWebSocketDuplex(socket, { role: 'client', head });
  const session = new YamuxSession(duplex, { role: 'client', keepaliveIntervalMs: 0 });
  sessions.push(session);
  const control = new ControlChannel(session.open());
  const answer = control.next(TIMEOUT_MS);
  control.send({
    type: 'register',
    protocolVersion: CONTROL_PROTOCOL_VERSION,
    agentId: `idle-agent-${i}`,
    agentVersion: 'bench',
    routes: [routeLabel(clusterId, 'apiserver')],
  });
  const message = await answer;
  if (message.type !== 'registered')
    throw new Error(`${message.type}: ${message.code ?? ''} ${message.message ?? ''}`);
}

async function main() {
  const t0 = performance.now();
  const { ok, errors, firstError } = await pool(count, concurrency, (i) =>
    values.plain ? openPlain() : openAgent(i),
  );
  process.send({ type: 'ready', ok, errors, firstError, ms: performance.now() - t0 });
}

process.on('message', (m) => {
  if (m.type !== 'close') return;
  for (const s of sessions) s.destroy();
  for (const ws of sockets) ws.terminate();
  setTimeout(() => process.exit(0), 200);
});
process.on('disconnect', () => process.exit(0));
main().catch((err) => {
  process.send({ type: 'ready', ok: 0, errors: count, firstError: String(err), ms: 0 });
});
