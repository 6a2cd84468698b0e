/**
 * Dials the tunnel server: one WebSocket over TLS to `/connect`, authenticated on the HTTP
 * upgrade with `Authorization: Bearer <token>`, through the egress proxy unless NO_PROXY says
 * otherwise. The RFC 6455 opening handshake is ours (websocket/handshake.ts) over node:http(s).
 * Resolves with the upgraded socket or rejects with a TunnelError:
 *
 * - HTTP 401/403 on the upgrade with our server's coded JSON body: that code (`TUN_ERR_TOKEN_*`
 *   and friends), `retryable: false`, `details.status`. The caller retries slowly: a refused
 *   token stays refused until an operator acts.
 * - a 101 that fails the handshake checks (wrong Sec-WebSocket-Accept, no `Upgrade: websocket`,
 *   an extension we did not offer): TUN_ERR_PROTOCOL, retryable (something on the path is not a
 *   WebSocket server; it may be gone next time), `details.websocket` says what.
 * - anything else (DNS, TCP, TLS, proxy, timeout, other statuses): TUN_ERR_TRANSPORT_CLOSED,
 *   retryable, with the errno or status in `details`.
 */
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { ClientRequest, IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import { HttpsProxyAgent } from 'https-proxy-agent';
import {
  ERROR_CODES,
  TunnelError,
  checkUpgradeResponse,
  createWebSocketKey,
  upgradeRequestHeaders,
} from '@cluster-tunnel/protocol';
import type { ErrorCode } from '@cluster-tunnel/protocol';
import { bypassesProxy } from './no-proxy.js';

/** The agent endpoint, used when the configured server URL has no path of its own. */
export const CONNECT_PATH = '/connect';
/** HTTP statuses that mean "these credentials are refused", as opposed to "try again". */
export const REFUSAL_STATUSES: ReadonlySet<number> = new Set([401, 403]);
const MAX_REFUSAL_BODY_BYTES = 8 * 1024;
const MAX_SERVER_MESSAGE_CHARS = 512;

export interface DialOptions {
  /** The configured server URL (wss:, or ws: to loopback). */
  server: string;
  token: string;
  /** PEM file trusted for the server besides the system roots; read on every dial (rotation). */
  caFile?: string | undefined;
  /** TLS server name (SNI and certificate check) when it differs from the URL host. */
  serverName?: string | undefined;
  proxyUrl?: string | undefined;
  noProxy: readonly string[];
  /** TCP connect, TLS, proxy CONNECT and the HTTP upgrade must all finish within this. */
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface DialedServer {
  /** The upgraded socket, not yet read from: hand it to createWebSocketDuplex with `head`. */
  socket: Duplex;
  /** Bytes the server sent right behind its 101, in the same read (e.g. its first yamux ping). */
  head: Buffer;
  url: string;
  /** The proxy the socket went through, credentials masked; undefined when direct. */
  proxy: string | undefined;
}

/** `wss://host` and `wss://host/` mean `wss://host/connect`; any other path is used as given. */
export function connectUrl(server: string): string {
  const url = new URL(server);
  if (url.pathname === '/' || url.pathname === '') url.pathname = CONNECT_PATH;
  return url.href;
}

/** True for the error dial() raises when the server refused the agent's credentials. */
export function isCredentialRefusal(err: unknown): boolean {
  if (!(err instanceof TunnelError)) return false;
  const status = err.details?.status;
  // Our server always names its reason; an uncoded 401/403 came from something in between.
  return typeof status === 'number' && REFUSAL_STATUSES.has(status) && err.details?.serverCode !== undefined;
}

function maskCredentials(url: string): string {
  const u = new URL(url);
  if (u.username || u.password) {
    u.username = '***';
    u.password = '';
  }
  return u.href;
}

/**
 * TLS contexts by CA file text. Building one (the public roots plus the file) costs about 25 ms
 * of CPU, more than the rest of a dial together: an agent probing for a replica dials in bursts,
 * and every dial would pay it. A few kept: the file changes only when the CA is rotated.
 */
const secureContexts = new Map<string, SecureContext>();
const MAX_SECURE_CONTEXTS = 4;

function secureContextFor(caText: string): SecureContext {
  let context = secureContexts.get(caText);
  if (context === undefined) {
    if (secureContexts.size >= MAX_SECURE_CONTEXTS) secureContexts.clear();
    context = createSecureContext({ ca: [...rootCertificates, caText] });
    secureContexts.set(caText, context);
  }
  return context;
}

export async function dial(options: DialOptions): Promise<DialedServer> {
  const url = connectUrl(options.server);
  const target = new URL(url);
  const port = Number(target.port || (target.protocol === 'wss:' ? 443 : 80));
  const useProxy = options.proxyUrl !== undefined && !bypassesProxy(target.hostname, port, options.noProxy);
  let secureContext: SecureContext | undefined;
  if (options.caFile !== undefined) {
    try {
      // Read on every dial, so a rotated CA file is picked up; parsed only when it changed.
      secureContext = secureContextFor(await readFile(options.caFile, 'utf8'));
    } catch (cause) {
      throw new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `cannot read caFile ${options.caFile}`, { cause });
    }
  }
  const key = createWebSocketKey();
  const requestOptions: https.RequestOptions = {
    method: 'GET',
    headers: { ...upgradeRequestHeaders(key), Authorization: `Bearer ${options.token}` },
    ...(secureContext === undefined ? {} : { secureContext }),
    ...(options.serverName === undefined ? {} : { servername: options.serverName }),
    // https-proxy-agent issues CONNECT (with Proxy-Authorization from the URL's credentials),
    // then starts TLS to the server with the ca/servername above: the proxy sees only ciphertext.
    // Direct, a one-off agent: the connection becomes the session, it never goes back to a pool.
    agent: useProxy ? new HttpsProxyAgent(options.proxyUrl as string) : false,
  };
  const proxy = useProxy ? maskCredentials(options.proxyUrl as string) : undefined;
  if (options.signal?.aborted) throw abortedError();
  // ws: is only accepted for loopback servers (config validation); everything else is wss:.
  const req: ClientRequest =
    target.protocol === 'wss:'
      ? https.request(httpUrl(target), requestOptions)
      : http.request(httpUrl(target), requestOptions);

  return new Promise<DialedServer>((resolve, reject) => {
    let settled = false;
    const signal = options.signal;
    // One deadline for everything: TCP, a proxy CONNECT that hangs, TLS, the server's answer.
    const timer = setTimeout(() => {
      fail(
        new TunnelError('TUN_ERR_TIMEOUT', `no WebSocket to ${url} within ${options.timeoutMs} ms`, {
          retryable: true,
          details: { errno: 'ETIMEDOUT' },
        }),
      );
    }, options.timeoutMs);
    const cleanup = (): void => {
      settled = true;
      clearTimeout(timer);
      req.off('upgrade', onUpgrade);
      req.off('response', onResponse);
      req.off('error', onError);
      // A late error (e.g. from destroying it) has nobody left to tell.
      req.on('error', ignoreError);
      signal?.removeEventListener('abort', onAbort);
    };
    const fail = (err: TunnelError, socket?: Duplex): void => {
      socket?.destroy();
      if (settled) return;
      cleanup();
      req.destroy();
      reject(err);
    };
    function onUpgrade(res: IncomingMessage, socket: Duplex, head: Buffer): void {
      // Until the caller wraps it, an error on the socket must not go unhandled; the duplex then
      // finds the socket destroyed and fails itself.
      socket.on('error', ignoreError);
      if (settled) return void socket.destroy();
      try {
        checkUpgradeResponse(res, key);
      } catch (err) {
        const e = err as TunnelError;
        fail(new TunnelError(e.code, e.message, { retryable: true, details: e.details }), socket);
        return;
      }
      cleanup();
      // node:http leaves the socket neither flowing nor paused, so nothing is read until the
      // duplex attaches its listener: frames behind `head` wait in the socket.
      resolve({ socket, head, url, proxy });
    }
    function onError(err: Error & { code?: string }): void {
      const via = proxy === undefined ? '' : ` via proxy ${proxy}`;
      fail(
        new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `cannot connect to ${url}${via}: ${err.message}`, {
          cause: err,
          details: { errno: err.code },
        }),
      );
    }
    // Any answer but 101 (a refusal, a proxy's 407 replayed by https-proxy-agent, a load balancer's page).
    function onResponse(res: IncomingMessage): void {
      readBody(res, Math.min(options.timeoutMs, 5_000)).then((body) => fail(refusalError(res, body, proxy)));
    }
    function onAbort(): void {
      fail(abortedError());
    }
    req.on('upgrade', onUpgrade);
    req.on('response', onResponse);
    req.on('error', onError);
    signal?.addEventListener('abort', onAbort);
    req.end();
  });
}

/** The http(s): URL node:http requests for a ws(s): URL. */
function httpUrl(target: URL): URL {
  const u = new URL(target.href);
  u.protocol = target.protocol === 'wss:' ? 'https:' : 'http:';
  return u;
}

function ignoreError(): void {}

function abortedError(): TunnelError {
  return new TunnelError('TUN_ERR_SESSION_CLOSED', 'the dial was abandoned: the agent is closing');
}

/** Reads at most MAX_REFUSAL_BODY_BYTES of a refusal body; never rejects. */
function readBody(res: IncomingMessage, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const done = (): void => {
      clearTimeout(timer);
      res.off('data', onData);
      res.off('end', done);
      res.off('close', done);
      res.off('error', done);
      resolve(Buffer.concat(chunks).toString('utf8'));
    };
    const onData = (chunk: Buffer): void => {
      if (length >= MAX_REFUSAL_BODY_BYTES) return done();
      chunks.push(chunk.subarray(0, MAX_REFUSAL_BODY_BYTES - length));
      length += chunk.length;
    };
    const timer = setTimeout(done, timeoutMs);
    res.on('data', onData);
    res.on('end', done);
    res.on('close', done);
    res.on('error', done);
  });
}

function refusalError(res: IncomingMessage, body: string, proxy: string | undefined): TunnelError {
  const status = res.statusCode ?? 0;
  let serverCode: unknown;
  let serverMessage: unknown;
  try {
    const parsed = JSON.parse(body) as { code?: unknown; message?: unknown };
    serverCode = parsed.code;
    serverMessage = parsed.message;
  } catch {
    // Not our server's JSON (a load balancer's or proxy's page): the status alone must do.
  }
  const message = typeof serverMessage === 'string' ? serverMessage.slice(0, MAX_SERVER_MESSAGE_CHARS) : '';
  const known = typeof serverCode === 'string' && Object.hasOwn(ERROR_CODES, serverCode);
  const details = { status, serverCode: known ? serverCode : undefined, serverMessage: message || undefined };
  // Only our server's coded answer is a verdict on the credentials; a 403 page from a proxy or
  // load balancer in between is a path problem, retried with ordinary backoff.
  if (REFUSAL_STATUSES.has(status) && known) {
    const code = serverCode as ErrorCode;
    return new TunnelError(
      code,
      `the server refused the agent (HTTP ${status})${message ? `: ${message}` : ''}`,
      {
        retryable: false,
        details,
      },
    );
  }
  const who = (status === 407 || status === 403) && proxy !== undefined ? `the proxy ${proxy}` : 'the server';
  return new TunnelError('TUN_ERR_TRANSPORT_CLOSED', `${who} answered the upgrade with HTTP ${status}`, {
    details,
  });
}
