/**
 * Control messages on the first stream an agent opens: each is a 4-byte big-endian length and
 * that many bytes of UTF-8 JSON with a `type`. One table below lists every message; adding a
 * message is one validator and one line there (docs/PROTOCOL.md lists them too).
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { ERROR_CODES, TunnelError, type ErrorCode } from '../errors.js';
import { CAPABILITY_PATTERN, MAX_CAPABILITIES } from './capabilities.js';

/**
 * The major control protocol version this build speaks, which an agent announces in `register`.
 * It changes only for what capabilities cannot express (an old peer must then refuse, not guess).
 */
export const CONTROL_PROTOCOL_VERSION = 1;
/** The oldest major version a server accepts in `register`: it accepts MIN..CONTROL_PROTOCOL_VERSION. */
export const MIN_PROTOCOL_VERSION = 1;
/** The most replicas a `registered` may announce (its `serverCount`). */
export const MAX_SERVER_COUNT = 64;
export const MAX_CONTROL_MESSAGE_BYTES = 64 * 1024;
/**
 * Agent and server ids travel in logs, metrics labels and control messages: a safe alphabet and
 * at most 128 characters (the register/registered validators refuse longer ones).
 */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** An agent's version string: semver and its build metadata fit (`0.1.0`, `1.2.3-rc.1+abc`). */
export const VERSION_PATTERN = /^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/;

export interface RegisterMessage {
  type: 'register';
  protocolVersion: number;
  agentId: string;
  agentVersion: string;
  /** Hostname labels (`cluster-<uid>`, `cluster-<uid>-<name>`) the agent serves. */
  routes: string[];
  /** Capabilities the agent speaks (capabilities.ts); absent from older agents, meaning none. */
  capabilities?: string[];
  /**
   * Route label → the route mode that serves it on the public port (`http`, `agent-tls`…), for
   * routes that are not `passthrough`; absent means all are. Servers without `route-modes`
   * ignore it (docs/PROTOCOL.md, "Route modes").
   */
  routeModes?: Record<string, string>;
  /**
   * Route label → the Host header the server sends an http route's target instead of the
   * user's (the route option `hostHeader`); part of `route-modes`, ignored without it.
   */
  hostHeaders?: Record<string, string>;
}
export interface RegisteredMessage {
  type: 'registered';
  serverId: string;
  /** Full hostnames now routed to this agent. */
  hostnames: string[];
  /**
   * How many replicas run behind the load balancer: the agent keeps one session to each
   * distinct serverId. Always sent by this server; absent from older ones (1–64).
   */
  serverCount?: number;
  /** Capabilities the server speaks (capabilities.ts); absent from older servers, meaning none. */
  capabilities?: string[];
}
/**
 * An error. With `requestId` it answers that `certificate-request` only and the session goes on;
 * without, it ends the session (a refused registration, a revoked or expired token).
 */
export interface ErrorMessage {
  type: 'error';
  code: ErrorCode;
  message: string;
  requestId?: number;
}
/**
 * Agent → server, after `registered` (capability `route-certificates`): sign this PKCS#10 CSR
 * (PEM) for the agent's agent-tls route hostnames. Answered by `certificate` or `error` with
 * the same `requestId`; the server checks the CSR itself (docs/PROTOCOL.md, "Route certificates").
 */
export interface CertificateRequestMessage {
  type: 'certificate-request';
  requestId: number;
  csr: string;
}
/** Server → agent: the certificate (PEM) the route CA issued for a `certificate-request`. */
export interface CertificateMessage {
  type: 'certificate';
  requestId: number;
  certificate: string;
}
export type ControlMessage =
  RegisterMessage | RegisteredMessage | ErrorMessage | CertificateRequestMessage | CertificateMessage;

/** A request id: a positive 31-bit integer, chosen by the agent. */
export const MAX_REQUEST_ID = 0x7fffffff;

type Validator = (m: Record<string, unknown>) => string | undefined;

const isString = (v: unknown, max = 253): v is string =>
  typeof v === 'string' && v.length > 0 && v.length <= max;

const isCount = (v: unknown, max: number): v is number =>
  Number.isInteger(v) && (v as number) >= 1 && (v as number) <= max;

/** The largest PEM a `certificate` may carry (a leaf with a few dozen names is under 4 KiB). */
export const MAX_CERTIFICATE_PEM_BYTES = 16 * 1024;

/** Optional everywhere: absent is none. Names we do not know pass (they are ignored later). */
const badCapabilities = (v: unknown): boolean =>
  v !== undefined &&
  (!Array.isArray(v) ||
    v.length > MAX_CAPABILITIES ||
    !v.every((c) => typeof c === 'string' && CAPABILITY_PATTERN.test(c)));
/** What a route mode's name looks like on the wire (an agent may name modes we do not have). */
export const ROUTE_MODE_PATTERN = /^[a-z][a-z0-9-]{0,31}$/;

/** What a Host header value may be: a host name or address, and a port. */
export const HOST_HEADER_PATTERN = /^[A-Za-z0-9.:[\]-]{1,255}$/;

/** Optional: an object of own keys, each one of `routes`, each value matching `value`. */
const badLabelMap = (v: unknown, routes: readonly unknown[], value: RegExp): boolean =>
  v !== undefined &&
  (typeof v !== 'object' ||
    v === null ||
    Array.isArray(v) ||
    !Object.entries(v).every(
      ([label, x]) => routes.includes(label) && typeof x === 'string' && value.test(x),
    ));

const CAPABILITIES_PROBLEM = `capabilities must be a list of at most ${MAX_CAPABILITIES} names matching ${CAPABILITY_PATTERN.source}`;

/** Every control message type and what makes it well formed. */
export const CONTROL_MESSAGES: Readonly<Record<ControlMessage['type'], Validator>> = {
  register: (m) =>
    !Number.isInteger(m.protocolVersion)
      ? 'protocolVersion must be an integer'
      : typeof m.agentId !== 'string' || !ID_PATTERN.test(m.agentId)
        ? `agentId must match ${ID_PATTERN.source}`
        : typeof m.agentVersion !== 'string' || !VERSION_PATTERN.test(m.agentVersion)
          ? `agentVersion must match ${VERSION_PATTERN.source}`
          : !Array.isArray(m.routes) || m.routes.length > 64 || !m.routes.every((r) => isString(r, 63))
            ? 'routes must be a list of at most 64 labels'
            : badCapabilities(m.capabilities)
              ? CAPABILITIES_PROBLEM
              : badLabelMap(m.routeModes, m.routes, ROUTE_MODE_PATTERN)
                ? `routeModes must map some of the routes to mode names matching ${ROUTE_MODE_PATTERN.source}`
                : badLabelMap(m.hostHeaders, m.routes, HOST_HEADER_PATTERN)
                  ? `hostHeaders must map some of the routes to values matching ${HOST_HEADER_PATTERN.source}`
                  : undefined,
  registered: (m) =>
    typeof m.serverId !== 'string' || !ID_PATTERN.test(m.serverId)
      ? `serverId must match ${ID_PATTERN.source}`
      : !Array.isArray(m.hostnames) || m.hostnames.length > 64 || !m.hostnames.every((h) => isString(h))
        ? 'hostnames must be a list of at most 64 host names'
        : m.serverCount !== undefined && !isCount(m.serverCount, MAX_SERVER_COUNT)
          ? `serverCount must be an integer from 1 to ${MAX_SERVER_COUNT}`
          : badCapabilities(m.capabilities)
            ? CAPABILITIES_PROBLEM
            : undefined,
  error: (m) =>
    typeof m.code !== 'string' || !Object.hasOwn(ERROR_CODES, m.code) || typeof m.message !== 'string'
      ? 'code must be a known TUN_ERR_* code'
      : m.requestId !== undefined && !isCount(m.requestId, MAX_REQUEST_ID)
        ? `requestId must be an integer from 1 to ${MAX_REQUEST_ID}`
        : undefined,
  // The CSR is only checked to be a string here: its size and content are the server's to judge,
  // so a bad one gets its own coded answer (TUN_ERR_CSR_INVALID) instead of ending the session.
  'certificate-request': (m) =>
    !isCount(m.requestId, MAX_REQUEST_ID)
      ? `requestId must be an integer from 1 to ${MAX_REQUEST_ID}`
      : typeof m.csr !== 'string' || m.csr.length === 0
        ? 'csr must be a PEM string'
        : undefined,
  certificate: (m) =>
    !isCount(m.requestId, MAX_REQUEST_ID)
      ? `requestId must be an integer from 1 to ${MAX_REQUEST_ID}`
      : !isString(m.certificate, MAX_CERTIFICATE_PEM_BYTES)
        ? `certificate must be a PEM string of at most ${MAX_CERTIFICATE_PEM_BYTES} characters`
        : undefined,
};

export function encodeControlMessage(message: ControlMessage): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  if (body.length > MAX_CONTROL_MESSAGE_BYTES) {
    throw new TunnelError(
      'TUN_ERR_BAD_CONTROL_MESSAGE',
      `control message of ${body.length} bytes is too large`,
    );
  }
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

export function decodeControlMessage(body: Buffer): ControlMessage {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', 'control message is not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', 'control message is not an object');
  }
  const m = parsed as Record<string, unknown>;
  // Own keys only: `type` and `code` come from the peer, and every object inherits `toString`,
  // `__proto__`, `hasOwnProperty`… (found by bench/fuzz.js).
  const validate =
    typeof m.type === 'string' && Object.hasOwn(CONTROL_MESSAGES, m.type)
      ? CONTROL_MESSAGES[m.type as ControlMessage['type']]
      : undefined;
  if (!validate) {
    // String() of a peer's object can throw (`{"toString":1}`); JSON of parsed JSON cannot.
    const type = typeof m.type === 'string' ? m.type : String(JSON.stringify(m.type)).slice(0, 64);
    throw new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', `unknown control message type ${type}`);
  }
  const problem = validate(m);
  if (problem) throw new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', `bad ${m.type} message: ${problem}`);
  return m as unknown as ControlMessage;
}

/**
 * Frames control messages over a stream. Events: 'message' (ControlMessage), 'error'
 * (TunnelError, only when listened to), 'close'.
 */
export class ControlChannel extends EventEmitter {
  /** Received bytes not yet part of a whole message, oldest first: joined once per message. */
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private closed = false;

  constructor(readonly stream: Duplex) {
    super();
    // A stream that died before we were handed it sends no 'close' again: we are closed now.
    this.closed = stream.destroyed;
    stream.on('data', this.onData);
    stream.on('close', this.onClose);
    stream.on('error', this.onError);
    stream.on('end', this.onEnd);
  }

  send(message: ControlMessage): void {
    if (!this.closed) this.stream.write(encodeControlMessage(message));
  }

  /** Resolves with the next message, or rejects on timeout, close or a malformed message. */
  next(timeoutMs: number): Promise<ControlMessage> {
    return new Promise((resolve, reject) => {
      const done = (err?: TunnelError, msg?: ControlMessage): void => {
        clearTimeout(timer);
        this.off('message', onMessage);
        this.off('close', onClosed);
        this.off('failed', onFailed);
        if (err) reject(err);
        else resolve(msg!);
      };
      const onMessage = (msg: ControlMessage): void => done(undefined, msg);
      const onFailed = (err: TunnelError): void => done(err);
      const onClosed = (): void => done(new TunnelError('TUN_ERR_SESSION_CLOSED', 'control stream closed'));
      const timer = setTimeout(
        () => done(new TunnelError('TUN_ERR_TIMEOUT', `no control message within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.on('message', onMessage);
      this.on('failed', onFailed);
      this.on('close', onClosed);
      if (this.closed) onClosed();
    });
  }

  close(): void {
    if (!this.closed) this.stream.end();
  }

  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    try {
      while (this.bufferedBytes >= 4) {
        const length = this.peekLength();
        if (length > MAX_CONTROL_MESSAGE_BYTES) {
          throw new TunnelError(
            'TUN_ERR_BAD_CONTROL_MESSAGE',
            `control message of ${length} bytes is too large`,
          );
        }
        if (this.bufferedBytes < 4 + length) return;
        const message = this.take(4 + length);
        this.emit('message', decodeControlMessage(message.subarray(4)));
      }
    } catch (err) {
      const e =
        err instanceof TunnelError ? err : new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', String(err));
      this.emit('failed', e);
      if (this.listenerCount('error') > 0) this.emit('error', e);
      this.stream.destroy();
    }
  };

  /** The 4-byte length at the front, which may span chunks (bufferedBytes >= 4). */
  private peekLength(): number {
    const first = this.chunks[0]!;
    if (first.length >= 4) return first.readUInt32BE(0);
    let length = 0;
    let got = 0;
    for (const chunk of this.chunks) {
      for (let i = 0; i < chunk.length && got < 4; i++, got++) length = length * 256 + chunk[i]!;
      if (got === 4) break;
    }
    return length;
  }

  /**
   * Removes and returns the first `n` buffered bytes (n <= bufferedBytes): a view when they lie
   * in one chunk, else one copy of exactly those bytes. Each byte is copied at most once, so a
   * message trickled in 1-byte chunks costs O(length), not O(length²).
   */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    this.bufferedBytes -= n;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let whole = 0; // chunks used up, removed at once below (shift per chunk would be quadratic)
    while (filled < n) {
      const chunk = this.chunks[whole]!;
      const used = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, used);
      filled += used;
      if (used === chunk.length) whole++;
      else this.chunks[whole] = chunk.subarray(used);
    }
    this.chunks.splice(0, whole);
    return out;
  }

  private readonly onError = (): void => {
    // The stream's own failure surfaces as 'close'; the session reports the cause.
  };

  /** The peer finished its side: a control channel has no use for half-close, so finish ours. */
  private readonly onEnd = (): void => {
    this.stream.end();
  };

  private readonly onClose = (): void => {
    if (this.closed) return;
    this.closed = true;
    this.stream.off('data', this.onData);
    this.emit('close');
  };
}
