#!/usr/bin/env node
/**
 * Bulk-throughput benchmark of the yamux session (packages/protocol, built dist) against the plain
 * transports it runs over, all measured in the same run on 127.0.0.1.
 *
 * Two processes, as in production (server and agent): this process is the sender; for each
 * transport path it forks itself with `--role sink --path <path>`, which listens on 127.0.0.1:0,
 * counts received bytes and reports over IPC. One direction is measured (sender → sink): from the
 * first byte written to the last byte counted by the sink (both read CLOCK_MONOTONIC through
 * process.hrtime, which is shared between processes).
 *
 * Cases (run interleaved: A B C D ... A B C D ...):
 *   tcp          plain TCP pipe (baseline)
 *   yamux-tcp-N  YamuxSession over TCP, N streams in parallel
 *   wss          plain ws WebSocket over TLS, binary messages (second baseline)
 *   yamux-wss-N  YamuxSession over createWebSocketDuplex (our handshake and frame codec) over TLS, N streams
 *
 * Usage: npm run bench:mux [-- options]    (see bench/README.md, or --help)
 */
import { fork } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import https from 'node:https';
import { Session as InspectorSession } from 'node:inspector';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import selfsigned from 'selfsigned';
import { WebSocket, WebSocketServer } from 'ws';
import { summarizeProfile } from './lib/profile.js';
import { sendUpgrade } from './lib/upgrade.js';

// The built protocol package (or, with --protocol <dir>, another build of it: A/B comparisons).
const DEFAULT_PROTOCOL_DIR = path.join(
  path.dirname(fileURLToPath(import.meta.url)),
  '../packages/protocol/dist',
);
let YamuxSession;
let createWebSocketDuplex;
// The protocol build's RFC 6455 handshake helpers (ws-handshake.ts), for yamux-wss.
let handshake;

const SCRIPT = fileURLToPath(import.meta.url);
const BENCH_DIR = path.dirname(SCRIPT);
const RESULTS_DIR = path.join(BENCH_DIR, 'results');
const HOST = '127.0.0.1';
const MiB = 1024 * 1024;
const PATHS = ['tcp', 'yamux-tcp', 'wss', 'yamux-wss'];
/** Plain ws sender: wait for the socket once ws holds more than this (same as createWebSocketDuplex's default). */
const WS_SEND_HIGH_WATER_MARK = 1024 * 1024;
/** "Quiet machine" for --settle: other processes use less than this many cores. */
const SETTLE_CORES = 0.15;

const nowNs = () => Number(process.hrtime.bigint());
const require = createRequire(import.meta.url);

// ---------------------------------------------------------------- options

const HELP = `usage: node bench/mux.js [options]
  --bytes <n>       bytes per measurement (suffix K/M/G = KiB/MiB/GiB; default 512M, --quick 128M)
  --runs <n>        measured repetitions per case (default 5, --quick 3)
  --quick           128 MiB per measurement, 3 runs
  --chunk <n>       size of each write by the sender (default 64K)
  --streams <list>  stream counts for the yamux cases (default 1,8)
  --only <list>     comma-separated case names or prefixes (e.g. yamux-wss, tcp,wss)
  --warmup <n>      bytes of one untimed warm-up run per case (default bytes/4, at least 16M; 0 = none)
  --profile         after the warm-up, profile each case (sender and sink, ${'`'}node:inspector${'`'}),
                    write bench/results/*.cpuprofile and print the top self-time functions;
                    no JSON is written in this mode
  --top <n>         rows in the profile tables (default 10)
  --protocol <dir>  use this build of packages/protocol instead of packages/protocol/dist
                    (a directory holding index.js; for A/B comparisons of a change)
  --zero-mask       the ws client (sender) uses an all-zero masking key, so ws skips masking
                    and its copy (ws's generateMask option); affects wss and yamux-wss
  --no-json         do not write bench/results/mux-<date>.json
  --timeout <s>     limit for one measurement (default 20 s + 20 MB/s)
  --settle <s>      before each measurement wait up to this long for the machine to be quiet
                    (other processes under ${SETTLE_CORES} cores for 300 ms; default 5, 0 = don't wait)
  --max-other <c>   a run during which other processes used more than c cores is "disturbed"
                    (default 0.3): it is repeated, and medians use undisturbed runs if any
  --retries <n>     repeats of a disturbed run (default 2)
  --help`;

function parseBytes(text, name) {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?$/i.exec(String(text).trim());
  if (!m) throw new Error(`--${name}: cannot read ${JSON.stringify(text)} as a byte count`);
  const mult = { '': 1, k: 1024, m: MiB, g: 1024 * MiB }[m[2].toLowerCase()];
  return Math.floor(Number(m[1]) * mult);
}

function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      role: { type: 'string', default: 'sender' },
      path: { type: 'string' },
      bytes: { type: 'string' },
      runs: { type: 'string' },
      quick: { type: 'boolean', default: false },
      chunk: { type: 'string', default: '64K' },
      streams: { type: 'string', default: '1,8' },
      only: { type: 'string' },
      warmup: { type: 'string' },
      profile: { type: 'boolean', default: false },
      top: { type: 'string', default: '10' },
      'no-json': { type: 'boolean', default: false },
      timeout: { type: 'string' },
      settle: { type: 'string', default: '5' },
      'max-other': { type: 'string', default: '0.3' },
      retries: { type: 'string', default: '2' },
      protocol: { type: 'string' },
      'zero-mask': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const bytes =
    values.bytes !== undefined ? parseBytes(values.bytes, 'bytes') : values.quick ? 128 * MiB : 512 * MiB;
  const runs = values.runs !== undefined ? Number(values.runs) : values.quick ? 3 : 5;
  const chunk = parseBytes(values.chunk, 'chunk');
  const streams = values.streams.split(',').map(Number);
  const warmup =
    values.warmup !== undefined
      ? parseBytes(values.warmup, 'warmup')
      : Math.max(16 * MiB, Math.floor(bytes / 4));
  const top = Number(values.top);
  const problems = [];
  if (!(bytes >= MiB)) problems.push('--bytes must be at least 1M');
  if (!(Number.isInteger(runs) && runs >= 1 && runs <= 1000))
    problems.push('--runs must be an integer in 1..1000');
  if (!(chunk >= 1024 && chunk <= 64 * MiB)) problems.push('--chunk must be in 1K..64M');
  if (!streams.every((n) => Number.isInteger(n) && n >= 1 && n <= 1024))
    problems.push('--streams must list integers in 1..1024');
  if (!(Number.isInteger(top) && top >= 1)) problems.push('--top must be a positive integer');
  if (values.role !== 'sender' && values.role !== 'sink') problems.push('--role must be sender or sink');
  if (values.role === 'sink' && !PATHS.includes(values.path))
    problems.push(`--path must be one of ${PATHS.join(', ')}`);
  if (problems.length) throw new Error(problems.join('\n'));
  return {
    role: values.role,
    path: values.path,
    bytes,
    runs,
    chunk,
    streams,
    only: values.only
      ? values.only
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : undefined,
    warmup,
    profile: values.profile,
    top,
    writeJson: !values['no-json'] && !values.profile,
    timeoutMs: values.timeout !== undefined ? Number(values.timeout) * 1000 : undefined,
    settleMs: Number(values.settle) * 1000,
    maxOther: Number(values['max-other']),
    retries: Number(values.retries),
    zeroMask: values['zero-mask'],
    protocolDir: path.resolve(values.protocol ?? DEFAULT_PROTOCOL_DIR),
    help: values.help,
  };
}

// ---------------------------------------------------------------- shared helpers

/** Whether ws runs its masking through bufferutil's native addon, judged from the module cache. */
function bufferutilStatus() {
  if (process.env.WS_NO_BUFFER_UTIL) return 'disabled (WS_NO_BUFFER_UTIL)';
  if (require('node:http').websocketMask) return 'not needed (node:http websocketMask built in)';
  const keys = Object.keys(require.cache);
  const addon = keys.find((k) => /[\\/]bufferutil[\\/].*\.node$/.test(k));
  if (addon) return `native (${path.relative(process.cwd(), addon)})`;
  if (keys.some((k) => /[\\/]bufferutil[\\/]fallback\.js$/.test(k)))
    return 'JS fallback (native addon failed to load)';
  return 'NOT loaded';
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Busy and total CPU time of the whole machine, ms summed over cores (from /proc/stat, 10 ms resolution). */
function machineCpu() {
  let busy = 0;
  let total = 0;
  for (const { times: t } of os.cpus()) {
    const b = t.user + t.nice + t.sys + t.irq;
    busy += b;
    total += b + t.idle;
  }
  return { busy, total };
}

const mbps = (bytes, ns) => (ns > 0 ? bytes / 1e6 / (ns / 1e9) : 0);

/** CPU profiling with node:inspector, so the profile covers exactly the measured runs. */
function createProfiler() {
  let session;
  const post = (method, params) =>
    new Promise((resolve, reject) =>
      session.post(method, params, (err, res) => (err ? reject(err) : resolve(res))),
    );
  return {
    async start(intervalUs = 200) {
      session = new InspectorSession();
      session.connect();
      await post('Profiler.enable');
      await post('Profiler.setSamplingInterval', { interval: intervalUs });
      await post('Profiler.start');
    },
    async stop(file) {
      const { profile } = await post('Profiler.stop');
      await post('Profiler.disable');
      session.disconnect();
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, JSON.stringify(profile));
      return profile;
    },
  };
}

// ---------------------------------------------------------------- sink (child process)

async function runSink(pathName) {
  const send = (msg) => {
    if (process.connected) process.send(msg);
  };
  // The measurement in progress: records of the connections/streams opened for it.
  const state = {
    run: -1,
    expected: 0,
    perStream: 0,
    total: 0,
    firstNs: 0,
    lastNs: 0,
    streams: [],
    reported: false,
    cpu0: undefined,
  };
  const live = new Set();
  const profiler = createProfiler();
  let cipher;

  function newRecord() {
    const rec = { run: state.run, bytes: 0, firstNs: 0, lastNs: 0 };
    state.streams.push(rec);
    return rec;
  }

  function count(rec, n) {
    if (rec.run !== state.run) return; // bytes of an abandoned earlier run
    if (rec.firstNs === 0) {
      rec.firstNs = nowNs();
      if (state.firstNs === 0) state.firstNs = rec.firstNs;
    }
    rec.bytes += n;
    state.total += n;
    if (rec.lastNs === 0 && rec.bytes >= state.perStream) rec.lastNs = nowNs();
    if (!state.reported && state.total >= state.expected) {
      state.reported = true;
      state.lastNs = nowNs();
      const cpu = process.cpuUsage(state.cpu0);
      send({
        type: 'done',
        run: state.run,
        cpuUs: cpu.user + cpu.system,
        bytes: state.total,
        firstNs: state.firstNs,
        lastNs: state.lastNs,
        streams: state.streams.map(({ bytes, firstNs, lastNs }) => ({ bytes, firstNs, lastNs })),
      });
    }
  }

  function connReady(run) {
    if (run === state.run) state.cpu0 = process.cpuUsage();
    send({ type: 'conn-ready', run });
  }

  function track(closable) {
    live.add(closable);
    closable.once('close', () => live.delete(closable));
  }

  function onYamuxTransport(transport, run) {
    const session = new YamuxSession(transport, { role: 'server' });
    session.on('stream', (stream) => {
      const rec = newRecord();
      stream.on('data', (chunk) => count(rec, chunk.length));
      stream.on('end', () => stream.end());
      stream.on('error', () => undefined);
    });
    // Production sessions are long-lived: the RTT that drives window auto-tuning is known before
    // a stream opens. Report the connection ready once our first ping has come back.
    session
      .ping()
      .then(() => connReady(run))
      .catch((err) => send({ type: 'conn-failed', run, message: String(err) }));
  }

  let server;
  if (pathName === 'tcp' || pathName === 'yamux-tcp') {
    server = net.createServer((socket) => {
      track(socket);
      const run = state.run;
      socket.on('error', () => undefined);
      if (pathName === 'tcp') {
        const rec = newRecord();
        socket.on('data', (chunk) => count(rec, chunk.length));
        socket.on('end', () => socket.end());
        connReady(run);
      } else {
        onYamuxTransport(socket, run);
      }
    });
  } else {
    const pems = await selfsigned.generate([{ name: 'commonName', value: 'localhost' }], {
      keySize: 2048,
      algorithm: 'sha256',
      extensions: [
        {
          name: 'subjectAltName',
          altNames: [
            { type: 7, ip: HOST },
            { type: 2, value: 'localhost' },
          ],
        },
      ],
    });
    server = https.createServer({ key: pems.private, cert: pems.cert });
    server.on('secureConnection', (tls) => {
      track(tls);
      cipher ??= { ...tls.getCipher(), protocol: tls.getProtocol() };
    });
    const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 256 * MiB });
    server.on('upgrade', (req, socket, head) => {
      const run = state.run;
      socket.on('error', () => undefined);
      if (pathName === 'wss') {
        wss.handleUpgrade(req, socket, head, (ws) => {
          ws.on('error', () => undefined);
          const rec = newRecord();
          ws.on('message', (data) => count(rec, data.length));
          connReady(run);
        });
      } else {
        // As the agent endpoint does: our handshake, then our frame codec on the socket.
        socket.write(handshake.upgradeResponseHead(handshake.checkUpgradeRequest(req)));
        onYamuxTransport(createWebSocketDuplex(socket, { role: 'server', head }), run);
      }
    });
  }
  server.on('connection', (socket) => track(socket));
  server.listen(0, HOST);
  await once(server, 'listening');

  process.on('message', (msg) => {
    void handle(msg).catch((err) => send({ type: 'error', message: String(err?.stack ?? err) }));
  });
  async function handle(msg) {
    switch (msg.type) {
      case 'prepare':
        Object.assign(state, {
          run: msg.run,
          expected: msg.bytes,
          perStream: msg.perStream,
          total: 0,
          firstNs: 0,
          lastNs: 0,
          streams: [],
          reported: false,
          cpu0: undefined,
        });
        send({ type: 'ready', run: msg.run, cipher });
        return;
      case 'profile-start':
        await profiler.start(msg.intervalUs);
        send({ type: 'profile-started' });
        return;
      case 'profile-stop': {
        const profile = await profiler.stop(msg.file);
        send({ type: 'profile-saved', file: msg.file, summary: summarizeProfile(profile, msg.top) });
        return;
      }
      case 'exit':
        shutdown(0);
        return;
    }
  }
  function shutdown(code) {
    for (const c of live) c.destroy();
    server.close();
    process.exit(code);
  }
  // The parent is gone (or asks us to stop): exit normally so nothing is left behind.
  process.on('disconnect', () => shutdown(0));
  process.on('SIGINT', () => shutdown(0));
  process.on('SIGTERM', () => shutdown(0));

  send({ type: 'listening', port: server.address().port, bufferutil: bufferutilStatus(), pid: process.pid });
}

// ---------------------------------------------------------------- sender (parent process)

class Sink {
  constructor(pathName, protocolDir) {
    this.path = pathName;
    this.waiters = new Set();
    this.exited = false;
    this.child = fork(SCRIPT, ['--role', 'sink', '--path', pathName, '--protocol', protocolDir], {
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (msg) => {
      if (msg.type === 'error') console.error(`[sink ${pathName}] ${msg.message}`);
      for (const w of [...this.waiters]) {
        if (w.match(msg)) {
          this.waiters.delete(w);
          w.resolve(msg);
        }
      }
    });
    this.child.on('exit', (code, signal) => {
      this.exited = true;
      const err = new Error(`sink ${pathName} exited (code ${code}, signal ${signal})`);
      for (const w of this.waiters) w.reject(err);
      this.waiters.clear();
    });
  }

  /** Resolves with the next message that matches; register before sending the request. */
  waitFor(match, ms, what) {
    if (this.exited) return Promise.reject(new Error(`sink ${this.path} has exited`));
    let waiter;
    const p = new Promise((resolve, reject) => {
      waiter = { match, resolve, reject };
      this.waiters.add(waiter);
    });
    return withTimeout(p, ms, `${what} (sink ${this.path})`).finally(() => this.waiters.delete(waiter));
  }

  send(msg) {
    if (!this.exited && this.child.connected) this.child.send(msg);
  }

  async start() {
    const listening = await this.waitFor((m) => m.type === 'listening', 30_000, 'sink start');
    this.port = listening.port;
    this.bufferutil = listening.bufferutil;
    return this;
  }

  async stop() {
    if (this.exited) return;
    this.send({ type: 'exit' });
    const exited = once(this.child, 'exit');
    await withTimeout(exited, 3_000, 'sink exit').catch(() => this.child.kill('SIGKILL'));
  }
}

/** Writes `total` bytes in `chunk`-sized writes, waiting for 'drain' whenever write() says so (like pipe()). */
function pumpWritable(w, source, total, onDone) {
  let sent = 0;
  const go = () => {
    while (sent < total) {
      const n = Math.min(source.length, total - sent);
      sent += n;
      if (!w.write(n === source.length ? source : source.subarray(0, n))) {
        w.once('drain', go);
        return;
      }
    }
    onDone();
  };
  go();
}

/** The same over a ws WebSocket: past the high-water mark, wait until ws has written the last message. */
function pumpWebSocket(ws, source, total, onDone, onError) {
  let sent = 0;
  const resume = (err) => (err ? onError(err) : go());
  const go = () => {
    while (sent < total) {
      const n = Math.min(source.length, total - sent);
      sent += n;
      const data = n === source.length ? source : source.subarray(0, n);
      if (ws.bufferedAmount + n > WS_SEND_HIGH_WATER_MARK) {
        ws.send(data, { binary: true }, resume);
        return;
      }
      ws.send(data, { binary: true });
    }
    onDone();
  };
  go();
}

async function connect(pathName, port, ms, zeroMask) {
  if (pathName === 'tcp' || pathName === 'yamux-tcp') {
    const socket = net.connect({ host: HOST, port });
    socket.setNoDelay(true); // as ws does for its sockets
    await withTimeout(once(socket, 'connect'), ms, 'tcp connect');
    return { socket };
  }
  if (pathName === 'yamux-wss') return upgrade(port, ms);
  const ws = new WebSocket(`wss://${HOST}:${port}/`, {
    rejectUnauthorized: false, // a throwaway self-signed certificate on loopback
    // --zero-mask: an all-zero masking key makes ws skip masking (and its copy) on the client side.
    ...(zeroMask ? { generateMask: (mask) => mask.fill(0) } : {}),
    perMessageDeflate: false,
    maxPayload: 256 * MiB,
  });
  await withTimeout(once(ws, 'open'), ms, 'wss open');
  return { ws };
}

/** The agent's handshake (packages/client/src/dialer.ts): the upgraded socket and what came with the 101. */
async function upgrade(port, ms) {
  const key = handshake.createWebSocketKey();
  const req = https.request(`https://${HOST}:${port}/`, {
    headers: handshake.upgradeRequestHeaders(key),
    rejectUnauthorized: false, // a throwaway self-signed certificate on loopback
    agent: false,
  });
  const upgraded = sendUpgrade(req, key, handshake.checkUpgradeResponse);
  return withTimeout(upgraded, ms, 'wss upgrade').catch((err) => {
    req.destroy();
    throw err;
  });
}

/**
 * Waits (at most maxMs) until the rest of the machine has been quiet for a 300 ms window, so
 * other work on these small machines disturbs the measurement less. Returns the load last seen.
 */
async function settle(maxMs, thresholdCores) {
  const deadline = Date.now() + maxMs;
  let other = NaN;
  for (let i = 0; i < 1000; i++) {
    const a = machineCpu();
    await new Promise((r) => setTimeout(r, 300));
    const b = machineCpu();
    other = (b.busy - a.busy) / 300;
    if (other <= thresholdCores || Date.now() >= deadline) break;
  }
  return other;
}

/** One measurement. Returns { ns, bytes, streams: [{ bytes, ns }] } or throws. */
async function measure(c, sink, run, bytes, source, timeoutMs, opts) {
  const perStream = Math.floor(bytes / c.streams);
  const total = perStream * c.streams;
  await (async () => {
    const ready = sink.waitFor((m) => m.type === 'ready' && m.run === run, 10_000, 'prepare');
    sink.send({ type: 'prepare', run, bytes: total, perStream });
    const msg = await ready;
    if (msg.cipher) sink.cipher = msg.cipher;
  })();

  const connReady = sink.waitFor(
    (m) => (m.type === 'conn-ready' || m.type === 'conn-failed') && m.run === run,
    10_000,
    'connection',
  );
  const conn = await connect(c.path, sink.port, 10_000, opts.zeroMask);
  let session;
  let failSender;
  const senderFailed = new Promise((_, reject) => {
    failSender = reject;
  });
  senderFailed.catch(() => undefined);
  try {
    if (c.path === 'yamux-tcp' || c.path === 'yamux-wss') {
      // Up before the sink reports ready: the sink's first ping needs an answer.
      const transport =
        c.path === 'yamux-tcp'
          ? conn.socket
          : createWebSocketDuplex(conn.socket, { role: 'client', head: conn.head });
      session = new YamuxSession(transport, { role: 'client' });
      session.on('close', (err) => err && failSender(err));
    }
    const ready = await Promise.race([connReady, senderFailed]);
    if (ready.type === 'conn-failed')
      throw new Error(`sink could not set up the connection: ${ready.message}`);
    const done = sink.waitFor((m) => m.type === 'done' && m.run === run, timeoutMs, `${c.name} run ${run}`);

    const sys0 = machineCpu();
    const own0 = process.cpuUsage();
    const t0 = nowNs();
    if (c.path === 'tcp') {
      conn.socket.on('error', failSender);
      pumpWritable(conn.socket, source, total, () => conn.socket.end());
    } else if (c.path === 'wss') {
      conn.ws.on('error', failSender);
      pumpWebSocket(conn.ws, source, total, () => undefined, failSender);
    } else {
      for (let i = 0; i < c.streams; i++) {
        const stream = session.open();
        stream.on('error', failSender);
        stream.resume(); // the sink sends nothing but its FIN; let it through
        pumpWritable(stream, source, perStream, () => stream.end());
      }
    }
    const result = await Promise.race([done, senderFailed]);
    const ns = result.lastNs - t0;
    const own = process.cpuUsage(own0);
    const sys1 = machineCpu();
    const wallMs = Math.max(1, (nowNs() - t0) / 1e6);
    const senderCores = (own.user + own.system) / 1000 / wallMs;
    const sinkCores = result.cpuUs / 1000 / (ns / 1e6);
    // Everything else the machine did meanwhile: other processes competing for the 2 cores.
    const otherCores = Math.max(0, (sys1.busy - sys0.busy) / wallMs - senderCores - sinkCores);
    return {
      ns,
      cpu: { sender: round2(senderCores), sink: round2(sinkCores), other: round2(otherCores) },
      // CPU seconds spent per GB moved (1e9 bytes): steadier than MB/s on a shared machine.
      cpuPerGB: {
        sender: round2((own.user + own.system) / 1e6 / (result.bytes / 1e9)),
        sink: round2(result.cpuUs / 1e6 / (result.bytes / 1e9)),
      },
      bytes: result.bytes,
      mbps: mbps(result.bytes, ns),
      firstByteUs: (result.firstNs - t0) / 1000,
      streams: result.streams.map((s) => ({
        bytes: s.bytes,
        ns: s.lastNs - t0,
        mbps: mbps(s.bytes, s.lastNs - t0),
      })),
    };
  } finally {
    // Close gracefully (exercises FIN/GoAway), but never wait long; then make sure it is gone.
    if (session) {
      await withTimeout(session.close(), 3_000, 'session close').catch(() => session.destroy());
    } else if (conn.socket) {
      if (!conn.socket.destroyed) {
        conn.socket.end();
        await withTimeout(once(conn.socket, 'close'), 3_000, 'socket close').catch(() => undefined);
      }
    } else if (conn.ws.readyState !== WebSocket.CLOSED) {
      conn.ws.close(1000);
      await withTimeout(once(conn.ws, 'close'), 3_000, 'ws close').catch(() => undefined);
    }
    conn.socket?.destroy();
    conn.ws?.terminate();
  }
}

function buildCases(opts) {
  const all = [{ name: 'tcp', path: 'tcp', streams: 1, baseline: undefined }];
  for (const n of opts.streams)
    all.push({ name: `yamux-tcp-${n}`, path: 'yamux-tcp', streams: n, baseline: 'tcp' });
  all.push({ name: 'wss', path: 'wss', streams: 1, baseline: 'tcp' });
  for (const n of opts.streams)
    all.push({ name: `yamux-wss-${n}`, path: 'yamux-wss', streams: n, baseline: 'wss' });
  if (!opts.only) return all;
  const picked = all.filter((c) => opts.only.some((o) => c.name === o || c.name.startsWith(`${o}-`)));
  if (picked.length === 0)
    throw new Error(
      `--only ${opts.only.join(',')} matches no case (cases: ${all.map((c) => c.name).join(', ')})`,
    );
  return picked;
}

const round2 = (x) => Math.round(x * 100) / 100;
const fmt = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const pad = (s, n) => String(s).padEnd(n);
const lpad = (s, n) => String(s).padStart(n);

function printTable(summaries) {
  const head = [
    'case',
    'streams',
    'n',
    'MB/s median',
    'min..max',
    'vs tcp',
    'vs wss',
    'per-stream min..max',
    'cores snd/sink/other',
    'CPU s/GB snd/sink',
  ];
  const rows = summaries.map((s) => [
    s.name,
    String(s.streams),
    `${s.used}${s.usedDisturbed ? '*' : ''}`,
    s.ok ? fmt(s.median) : 'FAILED',
    s.ok ? `${fmt(s.min)}..${fmt(s.max)}` : '',
    s.vsTcp !== undefined ? fmt(s.vsTcp, 2) : '',
    s.vsWss !== undefined ? fmt(s.vsWss, 2) : '',
    s.streams > 1 && s.ok ? `${fmt(s.perStreamMin)}..${fmt(s.perStreamMax)}` : '',
    s.cpu ? `${fmt(s.cpu.sender, 2)}/${fmt(s.cpu.sink, 2)}/${fmt(s.cpu.other, 2)}` : '',
    s.cpuPerGB ? `${fmt(s.cpuPerGB.sender, 2)}/${fmt(s.cpuPerGB.sink, 2)}` : '',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? pad(c, widths[i]) : lpad(c, widths[i]))).join('  ');
  console.log(line(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) console.log(line(r));
}

function printProfile(title, summary) {
  console.log(
    `\n${title}: ${fmt(summary.busyMs)} ms busy, ${fmt(summary.idleMs)} ms idle (${fmt((100 * summary.idleMs) / summary.totalMs, 1)}% idle)`,
  );
  const w = Math.max(...summary.functions.map((f) => f.name.length), 8);
  console.log(`  ${pad('self time by function', w)}  ${lpad('ms', 7)}  ${lpad('% busy', 6)}`);
  for (const f of summary.functions)
    console.log(`  ${pad(f.name, w)}  ${lpad(fmt(f.ms), 7)}  ${lpad(fmt(f.pctBusy, 1), 6)}`);
  const wf = Math.max(...summary.files.map((f) => f.name.length), 8);
  console.log(`  ${pad('self time by file', wf)}  ${lpad('ms', 7)}  ${lpad('% busy', 6)}`);
  for (const f of summary.files)
    console.log(`  ${pad(f.name, wf)}  ${lpad(fmt(f.ms), 7)}  ${lpad(fmt(f.pctBusy, 1), 6)}`);
}

async function runSender(opts) {
  const cases = buildCases(opts);
  const source = Buffer.allocUnsafe(opts.chunk);
  randomFillSync(source);
  const timeoutMs = (b) => opts.timeoutMs ?? 20_000 + Math.ceil(b / 20e6) * 1000;

  const sinks = new Map();
  let stopping = false;
  const stopAll = async () => {
    await Promise.all([...sinks.values()].map((s) => s.stop()));
  };
  const onSignal = (sig) => {
    if (stopping) return;
    stopping = true;
    console.error(`\n${sig}: stopping the sink processes`);
    void stopAll().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Last resort: no child outlives us, whatever happens.
  process.on('exit', () => {
    for (const s of sinks.values()) if (!s.exited) s.child.kill('SIGKILL');
  });

  try {
    for (const p of new Set(cases.map((c) => c.path))) sinks.set(p, new Sink(p, opts.protocolDir));
    await Promise.all([...sinks.values()].map((s) => s.start()));

    // Make sure ws (and with it bufferutil) is loaded here as it is in the sinks.
    const senderBufferutil = bufferutilStatus();
    const sinkBufferutil = Object.fromEntries([...sinks.values()].map((s) => [s.path, s.bufferutil]));
    const cpus = os.cpus();
    const wsVersion = require('ws/package.json').version;
    console.log(`cluster-tunnel bench:mux  ${new Date().toISOString()}`);
    console.log(
      `node ${process.version}, ${os.platform()}/${os.arch()}, ${cpus.length} CPUs (${cpus[0]?.model ?? '?'}), ws ${wsVersion}`,
    );
    console.log(
      `load average ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}; --settle ${opts.settleMs / 1000} s`,
    );
    if (opts.zeroMask) console.log('ws client masking key: all zeros (--zero-mask)');
    if (opts.protocolDir !== path.resolve(DEFAULT_PROTOCOL_DIR))
      console.log(`protocol build: ${opts.protocolDir}`);
    console.log(
      `bufferutil: sender ${senderBufferutil}; sinks ${[...new Set(Object.values(sinkBufferutil))].join(', ')}`,
    );
    console.log(
      `${(opts.bytes / MiB).toFixed(0)} MiB per measurement in ${opts.chunk / 1024} KiB writes, ${opts.runs} runs per case, interleaved; ` +
        `warm-up ${(opts.warmup / MiB).toFixed(0)} MiB; sender pid ${process.pid}, sinks ${[...sinks.values()].map((s) => `${s.path}=${s.child.pid}`).join(' ')}`,
    );

    if (opts.warmup > 0) {
      for (const c of cases)
        await measure(
          c,
          sinks.get(c.path),
          -1 - cases.indexOf(c),
          opts.warmup,
          source,
          timeoutMs(opts.warmup),
          opts,
        );
    }
    const tlsInfo = [...sinks.values()].find((s) => s.cipher)?.cipher;
    if (tlsInfo) console.log(`TLS: ${tlsInfo.protocol} ${tlsInfo.standardName ?? tlsInfo.name}`);

    let runId = 0;
    const results = new Map(cases.map((c) => [c.name, []]));
    if (opts.profile) {
      await profileCases(opts, cases, sinks, source, timeoutMs);
      return;
    }
    for (let rep = 0; rep < opts.runs && !stopping; rep++) {
      const line = [];
      for (const c of cases) {
        if (stopping) break;
        try {
          // A run disturbed by other processes is repeated (a bounded number of times) after settling again.
          for (let attempt = 0; attempt <= opts.retries; attempt++) {
            const before = opts.settleMs > 0 ? await settle(opts.settleMs, SETTLE_CORES) : NaN;
            const r = await measure(
              c,
              sinks.get(c.path),
              runId++,
              opts.bytes,
              source,
              timeoutMs(opts.bytes),
              opts,
            );
            r.otherBefore = round2(before);
            r.disturbed = r.cpu.other > opts.maxOther;
            results.get(c.name).push(r);
            line.push(
              `${c.name} ${fmt(r.mbps)} [${fmt(r.cpu.sender, 2)}/${fmt(r.cpu.sink, 2)}/${fmt(r.cpu.other, 2)}]${r.disturbed ? '*' : ''}`,
            );
            if (!r.disturbed) break;
          }
        } catch (err) {
          results.get(c.name).push({ error: String(err?.message ?? err) });
          line.push(`${c.name} FAILED`);
          console.error(`  ${c.name}: ${err?.stack ?? err}`);
        }
      }
      console.log(`run ${rep + 1}/${opts.runs}: ${line.join(', ')}`);
      if (rep === 0)
        console.log(
          `  (MB/s [CPU cores busy in sender/sink/other processes]; * = disturbed: other > ${opts.maxOther}, repeated up to ${opts.retries}x)`,
        );
    }

    const summaries = cases.map((c) => {
      const measured = results.get(c.name).filter((r) => r.error === undefined);
      // Medians over the undisturbed runs when there are any; otherwise over all (flagged in the table).
      const quiet = measured.filter((r) => !r.disturbed);
      const ok = quiet.length > 0 ? quiet : measured;
      const speeds = ok.map((r) => r.mbps);
      return {
        name: c.name,
        path: c.path,
        streams: c.streams,
        ok: ok.length > 0,
        failures: results.get(c.name).length - measured.length,
        used: ok.length,
        usedDisturbed: quiet.length === 0 && measured.length > 0,
        median: ok.length ? median(speeds) : NaN,
        min: Math.min(...speeds),
        max: Math.max(...speeds),
        perStreamMin: ok.length ? median(ok.map((r) => Math.min(...r.streams.map((s) => s.mbps)))) : NaN,
        perStreamMax: ok.length ? median(ok.map((r) => Math.max(...r.streams.map((s) => s.mbps)))) : NaN,
        cpu: ok.length
          ? {
              sender: round2(median(ok.map((r) => r.cpu.sender))),
              sink: round2(median(ok.map((r) => r.cpu.sink))),
              other: round2(median(ok.map((r) => r.cpu.other))),
            }
          : undefined,
        cpuPerGB: ok.length
          ? {
              sender: round2(median(ok.map((r) => r.cpuPerGB.sender))),
              sink: round2(median(ok.map((r) => r.cpuPerGB.sink))),
            }
          : undefined,
        runs: results.get(c.name),
      };
    });
    const byName = new Map(summaries.map((s) => [s.name, s]));
    for (const s of summaries) {
      const tcp = byName.get('tcp');
      const wss = byName.get('wss');
      if (s.name !== 'tcp' && tcp?.ok && s.ok) s.vsTcp = s.median / tcp.median;
      if (s.path === 'yamux-wss' && wss?.ok && s.ok) s.vsWss = s.median / wss.median;
    }
    console.log(
      '\nMB/s = 10^6 bytes/s, sender → sink, first byte written to last byte counted; median (min..max) over runs;',
    );
    console.log(
      'cores = median CPU cores busy during the run in the sender, the sink (all their threads) and all other processes;',
    );
    console.log('CPU s/GB = median CPU seconds the sender and the sink spent per 10^9 bytes moved;');
    console.log(`n = runs in the median (undisturbed ones; * = all were disturbed by other processes)`);
    printTable(summaries);
    const relative = summaries
      .filter((s) => s.ok && (s.path === 'yamux-tcp' || s.path === 'yamux-wss'))
      .map((s) => ({
        name: s.name,
        ratio: s.path === 'yamux-tcp' ? s.vsTcp : s.vsWss,
        base: s.path === 'yamux-tcp' ? 'tcp' : 'wss',
      }))
      .filter((x) => x.ratio !== undefined)
      .sort((a, b) => a.ratio - b.ratio);
    if (relative.length)
      console.log(
        `slowest relative to its own transport: ${relative[0].name} at ${fmt(relative[0].ratio, 2)} of ${relative[0].base}`,
      );

    if (opts.writeJson) {
      fs.mkdirSync(RESULTS_DIR, { recursive: true });
      const stamp = new Date()
        .toISOString()
        .replace(/\.\d+Z$/, 'Z')
        .replace(/:/g, '-');
      const file = path.join(RESULTS_DIR, `mux-${stamp}.json`);
      const json = {
        benchmark: 'mux',
        date: new Date().toISOString(),
        host: {
          node: process.version,
          platform: os.platform(),
          arch: os.arch(),
          cpus: cpus.length,
          cpuModel: cpus[0]?.model,
        },
        ws: wsVersion,
        bufferutil: { sender: senderBufferutil, sinks: sinkBufferutil },
        tls: tlsInfo ?? null,
        loadavgAtEnd: os.loadavg(),
        protocol: path.relative(path.dirname(BENCH_DIR), opts.protocolDir),
        config: {
          zeroMask: opts.zeroMask,
          settleMs: opts.settleMs,
          maxOther: opts.maxOther,
          retries: opts.retries,
          bytes: opts.bytes,
          runs: opts.runs,
          chunk: opts.chunk,
          warmup: opts.warmup,
          streams: opts.streams,
          only: opts.only ?? null,
        },
        unit: 'MB/s = 1e6 bytes per second',
        cases: summaries,
      };
      fs.writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
      console.log(`\nwrote ${path.relative(process.cwd(), file)}`);
    }
  } finally {
    await stopAll();
  }
}

/** --profile: each case alone, `runs` times, with the sender and its sink under the CPU profiler. */
async function profileCases(opts, cases, sinks, source, timeoutMs) {
  const stamp = new Date()
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/:/g, '-');
  let runId = 1_000_000;
  for (const c of cases) {
    const sink = sinks.get(c.path);
    const base = path.join(RESULTS_DIR, `mux-${stamp}-${c.name}`);
    const profiler = createProfiler();
    if (opts.settleMs > 0) await settle(opts.settleMs, SETTLE_CORES);
    const started = sink.waitFor((m) => m.type === 'profile-started', 10_000, 'profile start');
    sink.send({ type: 'profile-start', intervalUs: 200 });
    await started;
    await profiler.start(200);
    const speeds = [];
    for (let i = 0; i < opts.runs; i++) {
      const r = await measure(c, sink, runId++, opts.bytes, source, timeoutMs(opts.bytes), opts);
      speeds.push(`${fmt(r.mbps)} [${fmt(r.cpu.sender, 2)}/${fmt(r.cpu.sink, 2)}/${fmt(r.cpu.other, 2)}]`);
    }
    const senderProfile = await profiler.stop(`${base}-sender.cpuprofile`);
    const saved = sink.waitFor((m) => m.type === 'profile-saved', 30_000, 'profile save');
    sink.send({ type: 'profile-stop', file: `${base}-sink.cpuprofile`, top: opts.top });
    const { summary: sinkSummary } = await saved;
    console.log(
      `\n=== ${c.name} under the profiler (sampling 200 µs): MB/s [cores busy in sender/sink/other] ${speeds.join(', ')}`,
    );
    printProfile(
      `sender (${path.relative(process.cwd(), `${base}-sender.cpuprofile`)})`,
      summarizeProfile(senderProfile, opts.top),
    );
    printProfile(`sink (${path.relative(process.cwd(), `${base}-sink.cpuprofile`)})`, sinkSummary);
  }
}

// ---------------------------------------------------------------- main

let opts;
try {
  opts = parseOptions(process.argv.slice(2));
} catch (err) {
  console.error(`${err.message}\n\n${HELP}`);
  process.exit(2);
}
if (!opts.help) {
  handshake = await import(pathToFileURL(path.join(opts.protocolDir, 'index.js')).href);
  ({ YamuxSession, createWebSocketDuplex } = handshake);
}
if (opts.help) {
  console.log(HELP);
} else if (opts.role === 'sink') {
  await runSink(opts.path);
} else {
  try {
    await runSender(opts);
  } catch (err) {
    console.error(err?.stack ?? err);
    process.exitCode = 1;
  }
}
