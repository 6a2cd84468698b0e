#!/usr/bin/env node
/**
 * A hostile client of the public port, in a process of its own (as a real attacker is, so its
 * CPU is not the test process's): repeats one attack until --duration-ms has passed, pausing
 * --pause-ms after the server ends a round (the defence working), and prints one JSON line per
 * round: { round, sentBytes, closedBy } and a final { done: true, rounds }.
 *
 *   node attacker.mjs --kind <kind> --port <port> --ca <file> [--token <jwt>] [--duration-ms N]
 *                     [--connections N] [--local-address 127.0.0.x] [--pause-ms N] [--host NAME]
 *
 * --connections runs that many attack loops side by side (anonymous attacks hold many
 * connections at once).
 *
 * Kinds: yamux-ping-flood, ws-ping-flood, syn-flood, prereg-tiny-frames, empty-frames,
 * control-junk (an agent with a valid token); silent, slow-headers, hello-records (anonymous);
 * password-guess (anonymous: wrong Basic passwords for the http route --host, as fast as answered).
 * Uses the built packages (dist): `npm test` builds before it runs.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { captureClientHello } from '../../bench/lib/client-hello-capture.js';
import { dial } from '../../packages/client/dist/server-dialer.js';
import {
  CONTROL_PROTOCOL_VERSION,
  Flag,
  FrameType,
  createWebSocketDuplex,
  encodeControlMessage,
  encodeHeader,
} from '../../packages/protocol/dist/index.js';

const { values } = parseArgs({
  options: {
    kind: { type: 'string' },
    port: { type: 'string' },
    ca: { type: 'string' },
    token: { type: 'string', default: '' },
    'duration-ms': { type: 'string', default: '5000' },
    'pause-ms': { type: 'string', default: '200' },
    'local-address': { type: 'string', default: '127.0.0.1' },
    connections: { type: 'string', default: '1' },
    host: { type: 'string', default: 'proxy.localhost' },
  },
});
const port = Number(values.port);
const durationMs = Number(values['duration-ms']);
const pauseMs = Number(values['pause-ms']);
const deadline = Date.now() + durationMs;
/** Bytes one round may send at most: every loop here is bounded. */
const ROUND_BYTES = 256 * 1024 * 1024;
const MAX_ROUNDS = 10_000;

const frame = {
  ping: (id) => encodeHeader(FrameType.Ping, Flag.SYN, 0, id >>> 0),
  syn: (id) => encodeHeader(FrameType.WindowUpdate, Flag.SYN, id >>> 0, 0),
  empty: (id) => encodeHeader(FrameType.WindowUpdate, 0, id, 0),
  data: (id, payload, flags = 0) =>
    Buffer.concat([encodeHeader(FrameType.Data, flags, id, payload.length), payload]),
};
const control = (message) => frame.data(1, encodeControlMessage(message));
const register = () =>
  frame.data(
    1,
    encodeControlMessage({
      type: 'register',
      protocolVersion: CONTROL_PROTOCOL_VERSION,
      agentId: 'hostile',
      agentVersion: '0.1.0',
      routes: [],
    }),
    Flag.SYN,
  );

/** Resolves when `socket` closes or `budget` bytes of `make(i)` batches have been written. */
async function flood(socket, make, budget = ROUND_BYTES) {
  let sent = 0;
  let closed = false;
  const gone = new Promise((resolve) => socket.once('close', resolve));
  gone.then(() => (closed = true));
  for (let i = 0; sent < budget && !closed && Date.now() < deadline; i++) {
    const batch = make(i);
    sent += batch.length;
    if (!socket.write(batch)) {
      await Promise.race([new Promise((r) => socket.once('drain', r)), gone, sleep(deadline - Date.now())]);
    }
  }
  return { sent, closedBy: closed ? 'server' : 'attacker' };
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, Math.max(0, ms)));
}

/** 4096 frames at a time, so a batch is one big write. */
const batchOf = (make) => (i) => Buffer.concat(Array.from({ length: 4096 }, (_, j) => make(i * 4096 + j)));

async function agentSocket() {
  const dialed = await dial({
    server: `wss://127.0.0.1:${port}/connect`,
    token: values.token,
    caFile: values.ca,
    noProxy: [],
    timeoutMs: 5_000,
  });
  return dialed;
}

async function asAgent(attack) {
  const dialed = await agentSocket();
  const ws = createWebSocketDuplex(dialed.socket, { role: 'client', head: dialed.head });
  ws.on('error', () => {});
  // Never read what the server answers: its replies must not pile up in its memory.
  ws.pause();
  try {
    return await attack(ws, dialed.socket);
  } finally {
    ws.destroy();
  }
}

/** A masked WebSocket ping with 125 bytes of payload, written under the frame codec. */
function wsPing() {
  const payload = randomBytes(125);
  return Buffer.concat([Buffer.from([0x89, 0x80 | 125, 0, 0, 0, 0]), payload]);
}

function anonymous(open) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: values['local-address'] });
    socket.on('error', () => {});
    const started = Date.now();
    socket.once('close', () =>
      resolve({ sent: socket.bytesWritten, closedBy: 'server', heldMs: Date.now() - started }),
    );
    socket.once('connect', () => open(socket));
    setTimeout(() => socket.destroy(), Math.max(0, deadline - Date.now())).unref();
  });
}

/** A ClientHello for `proxy.localhost`, taken from a real TLS client, cut into 1-byte records. */
function helloInOneByteRecords(hello) {
  const body = hello.subarray(5);
  return Buffer.concat([...body].map((b) => Buffer.from([22, 3, 1, 0, 1, b])));
}

/** Requests one password-guess round makes on its keep-alive connection. */
const GUESSES_PER_ROUND = 50;

/** One keep-alive connection to the route --host, a wrong password per request; counts the answers. */
async function guessPasswords() {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const statuses = {};
  try {
    for (let i = 0; i < GUESSES_PER_ROUND && Date.now() < deadline; i++) {
      const password = randomBytes(12).toString('base64');
      const status = await new Promise((resolve, reject) => {
        const req = https.get(
          {
            host: '127.0.0.1',
            port,
            localAddress: values['local-address'],
            servername: values.host,
            ca: readFileSync(values.ca),
            path: '/',
            headers: {
              Host: values.host,
              Authorization: `Basic ${Buffer.from(`admin:${password}`).toString('base64')}`,
            },
            agent,
          },
          (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode));
          },
        );
        req.on('error', reject);
        req.setTimeout(Math.max(1, deadline - Date.now()), () => req.destroy());
      });
      statuses[status] = (statuses[status] ?? 0) + 1;
    }
  } finally {
    agent.destroy();
  }
  return { statuses, closedBy: 'attacker' };
}

const ATTACKS = {
  'yamux-ping-flood': () =>
    asAgent((ws) =>
      flood(ws, (i) => Buffer.concat([i === 0 ? register() : Buffer.alloc(0), batchOf(frame.ping)(i)])),
    ),
  'ws-ping-flood': () =>
    asAgent((_ws, socket) => flood(socket, () => Buffer.concat(Array.from({ length: 512 }, wsPing)))),
  'syn-flood': () =>
    asAgent((ws) =>
      flood(ws, (i) =>
        Buffer.concat([i === 0 ? register() : Buffer.alloc(0), batchOf((n) => frame.syn(3 + 2 * n))(i)]),
      ),
    ),
  'prereg-tiny-frames': () =>
    asAgent((ws) =>
      flood(ws, (i) =>
        Buffer.concat(
          Array.from({ length: 4096 }, (_, j) => {
            const n = i * 4096 + j;
            const id = 1 + 2 * (n % 256);
            return frame.data(id, Buffer.from([n & 0xff]), n < 256 ? Flag.SYN : 0);
          }),
        ),
      ),
    ),
  'empty-frames': () =>
    asAgent((ws) =>
      flood(ws, (i) =>
        Buffer.concat([i === 0 ? register() : Buffer.alloc(0), batchOf(() => frame.empty(1))(i)]),
      ),
    ),
  'control-junk': () =>
    asAgent((ws) =>
      flood(ws, (i) =>
        Buffer.concat([
          i === 0 ? register() : Buffer.alloc(0),
          ...Array.from({ length: 64 }, () => control({ type: 'registered', serverId: 'x', hostnames: [] })),
        ]),
      ),
    ),
  silent: () => anonymous(() => {}),
  'slow-headers': () =>
    new Promise((resolve) => {
      const socket = tls.connect({
        port,
        host: '127.0.0.1',
        localAddress: values['local-address'],
        servername: 'proxy.localhost',
        ca: readFileSync(values.ca),
      });
      socket.on('error', () => {});
      const started = Date.now();
      let timer;
      socket.once('secureConnect', () => {
        socket.write('GET /healthz HTTP/1.1\r\nHost: proxy.localhost\r\n');
        timer = setInterval(() => socket.write('X-Slow: 1\r\n'), 200);
      });
      socket.once('close', () => {
        clearInterval(timer);
        resolve({ sent: socket.bytesWritten, closedBy: 'server', heldMs: Date.now() - started });
      });
      setTimeout(() => socket.destroy(), Math.max(0, deadline - Date.now())).unref();
    }),
  'password-guess': guessPasswords,
  'hello-records': async () => {
    const records = helloInOneByteRecords(await captureClientHello({ servername: 'proxy.localhost' }));
    return anonymous((socket) => socket.write(records));
  },
};

const attack = ATTACKS[values.kind];
if (!attack) {
  process.stderr.write(`attacker: unknown --kind ${values.kind}\n`);
  process.exit(2);
}
let rounds = 0;
async function loop() {
  while (Date.now() < deadline && rounds < MAX_ROUNDS) {
    const round = ++rounds;
    try {
      const result = await attack();
      process.stdout.write(`${JSON.stringify({ round, ...result })}\n`);
    } catch (err) {
      process.stdout.write(`${JSON.stringify({ round, error: String(err.code ?? err.message) })}\n`);
    }
    await sleep(Math.min(pauseMs, deadline - Date.now()));
  }
}
await Promise.all(Array.from({ length: Number(values.connections) }, loop));
process.stdout.write(`${JSON.stringify({ done: true, rounds })}\n`);
process.exit(0);
