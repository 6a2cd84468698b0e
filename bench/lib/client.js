/**
 * The user side: a TLS client (SNI cluster-bench.proxy.localhost, trusting only the upstream's
 * certificate) speaking just enough HTTP/1.1 by hand to keep its own cost small and constant:
 * bulk download and upload, keep-alive request/response, one request per new connection.
 * The raw-TCP paths use the same requests over a plain TCP connection (connectRaw).
 */
import { randomFillSync } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { ROUTE_HOST } from './certs.js';

const UPLOAD_CHUNK_BYTES = 256 * 1024;
const uploadSource = randomFillSync(Buffer.allocUnsafe(4 * 1024 * 1024));
const HEADER_END = Buffer.from('\r\n\r\n');
const SMALL_REQUEST = Buffer.from(`GET /small HTTP/1.1\r\nHost: ${ROUTE_HOST}\r\n\r\n`);
const SMALL_REQUEST_CLOSE = Buffer.from(
  `GET /small HTTP/1.1\r\nHost: ${ROUTE_HOST}\r\nConnection: close\r\n\r\n`,
);

function ignore() {}

// One SecureContext for every connection: passing `ca` to tls.connect builds a new context (PEM
// parsing, a new X509 store) per connection, which costs more than the handshake on this machine.
const contexts = new Map();
function contextFor(ca) {
  let context = contexts.get(ca);
  if (!context) {
    context = tls.createSecureContext({ ca });
    contexts.set(ca, context);
  }
  return context;
}

/** Opens a TLS connection through `port`; resolves once the handshake with the upstream is done. */
export function connectTls(port, ca, timeoutMs = 10_000, servername = ROUTE_HOST) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername,
      secureContext: contextFor(ca),
      noDelay: true,
    });
    const timer = setTimeout(() => socket.destroy(new Error(`TLS connect via ${port} timed out`)), timeoutMs);
    const onError = (err) => {
      clearTimeout(timer);
      reject(err);
    };
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      // A late error (a reset after the measurement) must not crash the bench; users add their own.
      socket.on('error', ignore);
      socket.setNoDelay(true);
      resolve(socket);
    });
  });
}

/**
 * Opens a plain TCP connection through `port` and proves it reaches the upstream with one
 * `GET /small`: a TCP connect alone ends at the first hop (a relay, sshd or the tunnel-server
 * accept at once), while the TLS handshake of connectTls crosses the whole path. Resolves with
 * the socket, ready for the next request, so bulk timings start on an open path either way.
 */
export async function connectRaw(port, timeoutMs = 10_000) {
  const socket = await new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
    const timer = setTimeout(() => s.destroy(new Error(`TCP connect to ${port} timed out`)), timeoutMs);
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    s.once('connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      s.on('error', ignore);
      resolve(s);
    });
  });
  try {
    await firstResponse(socket, SMALL_REQUEST, timeoutMs);
  } catch (err) {
    socket.destroy();
    throw err;
  }
  return socket;
}

/** Opens a connection through `port`: plain TCP when `raw`, else TLS with the upstream (`ca`). */
export function connectPath(port, { raw, ca }) {
  return raw ? connectRaw(port) : connectTls(port, ca);
}

/**
 * Sends `request` and resolves when its whole response (status 200) has arrived; the socket's
 * own listeners are removed again, so it can be used for more requests.
 */
function firstResponse(socket, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    let left = 0;
    const finish = (err) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', finish);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(() => finish(new Error('response timed out')), timeoutMs);
    const onClose = () => finish(new Error('closed before the response'));
    const onData = responseReader(
      (status, length, already) => {
        if (status !== 200) return finish(new Error(`HTTP ${status}`));
        left = length - already;
        if (left <= 0) finish();
      },
      (n) => {
        left -= n;
        if (left <= 0) finish();
      },
    );
    socket.on('data', onData);
    socket.once('error', finish);
    socket.once('close', onClose);
    socket.write(request);
  });
}

/**
 * Parses one HTTP response head out of a stream of chunks; calls `onHead(status, contentLength,
 * bodyBytesAlreadyHere)` once, then `onBody(n)` for each later chunk.
 */
function responseReader(onHead, onBody) {
  let head = null;
  let done = false;
  return (chunk) => {
    if (done) return onBody(chunk.length);
    head = head === null ? chunk : Buffer.concat([head, chunk]);
    const end = head.indexOf(HEADER_END);
    if (end === -1) return;
    done = true;
    const text = head.latin1Slice(0, end);
    const status = Number(text.slice(9, 12));
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(text);
    const rest = head.length - end - 4;
    head = null;
    onHead(status, m ? Number(m[1]) : -1, rest);
  };
}

/**
 * Downloads `bytes` on an open connection; `progress.bytes` counts body bytes as they arrive.
 * Resolves with the milliseconds from the request to the last byte.
 */
export function download(socket, bytes, progress = { bytes: 0 }) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const finish = (err) => {
      socket.off('data', onData);
      socket.off('error', finish);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve(performance.now() - t0);
    };
    const onClose = () => finish(new Error(`connection closed after ${progress.bytes} of ${bytes} bytes`));
    const check = () => {
      if (progress.bytes >= bytes) finish();
    };
    const onData = responseReader(
      (status, length, already) => {
        if (status !== 200 || length !== bytes) return finish(new Error(`bad response ${status} ${length}`));
        progress.bytes += already;
        check();
      },
      (n) => {
        progress.bytes += n;
        check();
      },
    );
    socket.on('data', onData);
    socket.once('error', finish);
    socket.once('close', onClose);
    socket.write(`GET /down?n=${bytes} HTTP/1.1\r\nHost: ${ROUTE_HOST}\r\n\r\n`);
  });
}

/** Uploads `bytes` on an open connection; resolves with ms from the first byte to the server's answer. */
export function upload(socket, bytes, progress = { bytes: 0 }) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let settled = false;
    const finish = (err) => {
      if (settled) return;
      settled = true;
      socket.off('data', onData);
      socket.off('drain', pump);
      socket.off('error', finish);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve(performance.now() - t0);
    };
    const onClose = () => finish(new Error('connection closed during upload'));
    let answer = '';
    const onData = (chunk) => {
      answer += chunk.latin1Slice();
      const end = answer.indexOf('\r\n\r\n');
      if (end === -1) return;
      const body = answer.slice(end + 4);
      if (!answer.startsWith('HTTP/1.1 200')) return finish(new Error(`bad answer ${answer.slice(0, 40)}`));
      if (body.length > 0 && Number(body) !== bytes) return finish(new Error(`server counted ${body}`));
      if (body.length > 0) finish();
    };
    let offset = 0;
    const pump = () => {
      while (progress.bytes < bytes) {
        const n = Math.min(bytes - progress.bytes, UPLOAD_CHUNK_BYTES, uploadSource.length - offset);
        progress.bytes += n;
        const ok = socket.write(uploadSource.subarray(offset, offset + n));
        offset = (offset + n) % uploadSource.length;
        if (!ok) return;
      }
      socket.off('drain', pump);
    };
    socket.on('data', onData);
    socket.once('error', finish);
    socket.once('close', onClose);
    socket.on('drain', pump);
    socket.write(`POST /up HTTP/1.1\r\nHost: ${ROUTE_HOST}\r\nContent-Length: ${bytes}\r\n\r\n`);
    pump();
  });
}

/** One keep-alive connection doing GET /small requests one after another. */
export class HttpConn {
  static async open(port, ca) {
    return new HttpConn(await connectTls(port, ca));
  }

  /**
   * A TLS connection to an http route of the tunnel (`host` is its hostname, `cookie` the
   * session cookie a link set): the same small request, with that Host and Cookie.
   */
  static async openRoute(port, ca, host, cookie) {
    const conn = new HttpConn(await connectTls(port, ca, 10_000, host));
    conn.requestBytes = Buffer.from(`GET /small HTTP/1.1\r\nHost: ${host}\r\nCookie: ${cookie}\r\n\r\n`);
    return conn;
  }

  /** A plain TCP connection that has already had one request answered (see connectRaw). */
  static async openRaw(port, timeoutMs) {
    return new HttpConn(await connectRaw(port, timeoutMs));
  }

  constructor(socket) {
    this.socket = socket;
    this.requestBytes = SMALL_REQUEST;
    this.pending = null;
    this.reader = null;
    socket.on('data', (chunk) => this.reader?.(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  fail(err) {
    const p = this.pending;
    this.pending = null;
    p?.reject(err);
  }

  /** Resolves with the request's latency in ms. */
  request() {
    return new Promise((resolve, reject) => {
      const t0 = performance.now();
      let left = 0;
      const done = () => {
        this.pending = null;
        this.reader = null;
        resolve(performance.now() - t0);
      };
      this.pending = { resolve, reject };
      this.reader = responseReader(
        (status, length, already) => {
          if (status !== 200) return this.fail(new Error(`HTTP ${status}`));
          left = length - already;
          if (left <= 0) done();
        },
        (n) => {
          left -= n;
          if (left <= 0) done();
        },
      );
      this.socket.write(this.requestBytes);
    });
  }

  close() {
    this.socket.removeAllListeners('close');
    this.socket.destroy();
  }
}

/** A new TLS connection, one request, close: resolves with the total ms. */
export async function oneShot(port, ca, timeoutMs = 10_000) {
  const t0 = performance.now();
  const socket = await connectTls(port, ca, timeoutMs);
  try {
    await firstResponse(socket, SMALL_REQUEST_CLOSE, timeoutMs);
  } finally {
    socket.end();
  }
  return performance.now() - t0;
}

/** Ends and waits for the close of a connection, bounded. */
export function closeSocket(socket, timeoutMs = 2_000) {
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve();
    const timer = setTimeout(() => {
      socket.destroy();
      resolve();
    }, timeoutMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.end();
  });
}
