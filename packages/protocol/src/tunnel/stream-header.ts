/**
 * The first bytes of every stream the server opens to an agent, and the agent's one-frame
 * answer. Two header versions: v1, u8 1 | u8 n | route label | u8 m | user address, which
 * every agent reads; and v2, written only to agents that announced `typed-stream-header`
 * (capabilities.ts): u8 2 | u8 stream type | u8 n | route label | u8 m | user address | u8 count
 * | count × (u8 k | key | u16 v | value). The reader takes both.
 * Reply: u8 status (0 ok, 1 refused) | u16 length | JSON {code, message} when refused. The server
 * sends user bytes right after the header (no round trip); the agent answers once it has dialed
 * its target, then the stream carries raw bytes both ways. A refusal is followed by RST, and the
 * reply tells the server why (RST itself carries no reason).
 */
import { isUtf8 } from 'node:buffer';
import type { Readable } from 'node:stream';
import { ERROR_CODES, TunnelError, type ErrorCode } from '../errors.js';

/** Stream header versions: the first byte of every stream header. */
export const STREAM_HEADER_VERSIONS = {
  /** Route label and user address: always a route stream. Every agent reads it. */
  v1: 1,
  /** Stream type, route label, user address, metadata. Only to agents with `typed-stream-header`. */
  v2: 2,
} as const;
export type StreamHeaderVersion = (typeof STREAM_HEADER_VERSIONS)[keyof typeof STREAM_HEADER_VERSIONS];

/**
 * What a stream is for: byte 1 of a v2 header. 0 is never sent; 2–255 are left for the next modes,
 * each announced by a capability of its own, so a server sends a type only to agents that know
 * it. An agent refuses a type it does not know with TUN_ERR_UNKNOWN_STREAM_TYPE; its session goes on.
 */
export const STREAM_TYPES = {
  /** A user connection for a route: the agent dials the route's target; raw bytes follow the header. */
  route: 1,
  /**
   * A data-path probe (capability `probe-streams`): the agent connects to the route's target
   * (and completes TLS to an https target), closes that connection, and answers with the reply;
   * after an ok reply, one JSON object `{"dialMs":n}` and the end of the stream.
   */
  probe: 2,
} as const;

/** The most bytes a probe's answer after its reply may take. */
export const MAX_PROBE_ANSWER_BYTES = 256;
export type StreamType = keyof typeof STREAM_TYPES;

export const STREAM_STATUS = {
  /** The agent reached the target; raw bytes follow. */
  ok: 0,
  /** The agent refused or failed; a JSON reason follows, then RST. */
  refused: 1,
} as const;

/** Metadata keys: short lower-case ASCII tokens. */
export const STREAM_METADATA_KEY_PATTERN = /^[a-z0-9][a-z0-9-]{0,31}$/;
/** The most metadata entries one v2 header may carry. */
export const MAX_STREAM_METADATA_ENTRIES = 16;
/** The most bytes the metadata entries of one v2 header may take, length fields included. */
export const MAX_STREAM_METADATA_BYTES = 1024;
/** The longest header either version can be: what the reader buffers at most. */
export const MAX_STREAM_HEADER_BYTES = 3 + 255 + 1 + 255 + 1 + MAX_STREAM_METADATA_BYTES;

export interface StreamHeader {
  /** What the stream is for; a v1 header always means `route`. */
  type: StreamType;
  /** Hostname label of the route, e.g. `cluster-u1` or `cluster-u1-dashboard`. */
  route: string;
  /** The user's address as the server saw it (`ip:port`), for the agent's logs. */
  remoteAddress: string;
  /**
   * Named values for the agent (v2 only; left out when there are none): keys match
   * STREAM_METADATA_KEY_PATTERN, values are UTF-8; at most 16 entries, 1 KiB in all.
   */
  metadata?: Readonly<Record<string, string>>;
}

export type StreamReply = { ok: true } | { ok: false; code: ErrorCode; message: string };

const STREAM_TYPE_NAMES = new Map<number, StreamType>(
  Object.entries(STREAM_TYPES).map(([name, value]) => [value, name as StreamType]),
);

function badHeader(message: string): TunnelError {
  return new TunnelError('TUN_ERR_BAD_STREAM_HEADER', message);
}

const overBudget = (): TunnelError => badHeader(`metadata over ${MAX_STREAM_METADATA_BYTES} bytes`);

/**
 * Encodes `header` as the given version. v1 carries neither a type nor metadata: a header with
 * a type other than `route`, or with metadata, cannot be written as v1 (the caller decides
 * what an agent without `typed-stream-header` gets, registered-agent.ts).
 */
export function encodeStreamHeader(header: StreamHeader, version: StreamHeaderVersion): Buffer {
  const route = Buffer.from(header.route, 'utf8');
  const remote = Buffer.from(header.remoteAddress, 'utf8').subarray(0, 255);
  if (route.length === 0 || route.length > 255) throw badHeader('route label must be 1-255 bytes');
  if (!Object.hasOwn(STREAM_TYPES, header.type)) {
    throw new TunnelError('TUN_ERR_UNKNOWN_STREAM_TYPE', `unknown stream type ${String(header.type)}`);
  }
  const entries = Object.entries(header.metadata ?? {});
  if (version === STREAM_HEADER_VERSIONS.v1) {
    if (header.type !== 'route') {
      throw new TunnelError(
        'TUN_ERR_UNKNOWN_STREAM_TYPE',
        `a v1 stream header cannot carry a ${header.type} stream`,
      );
    }
    if (entries.length > 0) throw badHeader('a v1 stream header carries no metadata');
    return Buffer.concat([Buffer.from([version, route.length]), route, Buffer.from([remote.length]), remote]);
  }
  if (version !== STREAM_HEADER_VERSIONS.v2)
    throw badHeader(`unknown stream header version ${String(version)}`);
  if (entries.length > MAX_STREAM_METADATA_ENTRIES) {
    throw badHeader(`at most ${MAX_STREAM_METADATA_ENTRIES} metadata entries`);
  }
  const parts: Buffer[] = [
    Buffer.from([version, STREAM_TYPES[header.type], route.length]),
    route,
    Buffer.from([remote.length]),
    remote,
    Buffer.from([entries.length]),
  ];
  let metadataBytes = 0;
  for (const [key, value] of entries) {
    if (!STREAM_METADATA_KEY_PATTERN.test(key)) {
      throw badHeader(`metadata key ${JSON.stringify(key)} must match ${STREAM_METADATA_KEY_PATTERN.source}`);
    }
    if (typeof value !== 'string') throw badHeader(`metadata ${key} must be a string`);
    const v = Buffer.from(value, 'utf8');
    metadataBytes += 1 + key.length + 2 + v.length;
    if (metadataBytes > MAX_STREAM_METADATA_BYTES) throw overBudget();
    const head = Buffer.alloc(1 + key.length + 2);
    head[0] = key.length;
    head.write(key, 1, 'ascii');
    head.writeUInt16BE(v.length, 1 + key.length);
    parts.push(head, v);
  }
  return Buffer.concat(parts);
}

/**
 * A prefix parser: the value and the bytes it took, or how many bytes it needs before it can
 * get further (always more than it was given), so the reader joins chunks only that often. Every
 * check looks only at bytes it has asked for, in order: the result (or error) is the same
 * however the bytes arrive.
 */
type Parse<T> = (buf: Buffer) => { value: T; consumed: number } | { needBytes: number };

const parseHeader: Parse<StreamHeader> = (buf) => {
  if (buf.length < 1) return { needBytes: 1 };
  if (buf[0] === STREAM_HEADER_VERSIONS.v1) return parseV1(buf);
  if (buf[0] === STREAM_HEADER_VERSIONS.v2) return parseV2(buf);
  throw badHeader(`unknown stream header version ${buf[0]}`);
};

/** u8 1 | u8 n | route | u8 m | address. */
const parseV1: Parse<StreamHeader> = (buf) => {
  if (buf.length < 2) return { needBytes: 2 };
  const n = buf[1]!;
  if (n === 0) throw badHeader('empty route label');
  if (buf.length < 3 + n) return { needBytes: 3 + n };
  const m = buf[2 + n]!;
  if (buf.length < 3 + n + m) return { needBytes: 3 + n + m };
  return {
    value: {
      type: 'route',
      route: buf.toString('utf8', 2, 2 + n),
      remoteAddress: buf.toString('utf8', 3 + n, 3 + n + m),
    },
    consumed: 3 + n + m,
  };
};

/** u8 2 | u8 type | u8 n | route | u8 m | address | u8 count | count × (u8 k | key | u16 v | value). */
const parseV2: Parse<StreamHeader> = (buf) => {
  if (buf.length < 3) return { needBytes: 3 };
  const type = STREAM_TYPE_NAMES.get(buf[1]!);
  if (type === undefined) {
    throw new TunnelError('TUN_ERR_UNKNOWN_STREAM_TYPE', `unknown stream type ${buf[1]}`);
  }
  const n = buf[2]!;
  if (n === 0) throw badHeader('empty route label');
  if (buf.length < 4 + n) return { needBytes: 4 + n };
  const m = buf[3 + n]!;
  if (buf.length < 5 + n + m) return { needBytes: 5 + n + m };
  const count = buf[4 + n + m]!;
  if (count > MAX_STREAM_METADATA_ENTRIES) {
    throw badHeader(`${count} metadata entries, at most ${MAX_STREAM_METADATA_ENTRIES}`);
  }
  const header: StreamHeader = {
    type,
    route: buf.toString('utf8', 3, 3 + n),
    remoteAddress: buf.toString('utf8', 4 + n, 4 + n + m),
  };
  const start = 5 + n + m;
  let at = start;
  // Keys match STREAM_METADATA_KEY_PATTERN, so none is `__proto__`: a plain object is safe.
  const metadata: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    if (buf.length < at + 1) return { needBytes: at + 1 };
    const k = buf[at]!;
    if (k === 0 || k > 32) throw badHeader(`metadata key of ${k} bytes`);
    // The budget is checked before each wait, so the reader never asks for more than
    // MAX_STREAM_HEADER_BYTES: the entry without its value here, with it below.
    if (at + 1 + k + 2 - start > MAX_STREAM_METADATA_BYTES) throw overBudget();
    if (buf.length < at + 1 + k + 2) return { needBytes: at + 1 + k + 2 };
    const key = buf.toString('latin1', at + 1, at + 1 + k);
    if (!STREAM_METADATA_KEY_PATTERN.test(key)) {
      throw badHeader(`metadata key ${JSON.stringify(key)} must match ${STREAM_METADATA_KEY_PATTERN.source}`);
    }
    if (Object.hasOwn(metadata, key)) throw badHeader(`metadata key ${key} repeated`);
    const v = buf.readUInt16BE(at + 1 + k);
    const end = at + 1 + k + 2 + v;
    if (end - start > MAX_STREAM_METADATA_BYTES) throw overBudget();
    if (buf.length < end) return { needBytes: end };
    const value = buf.subarray(end - v, end);
    if (!isUtf8(value)) throw badHeader(`metadata ${key} is not UTF-8`);
    metadata[key] = value.toString('utf8');
    at = end;
  }
  return { value: count > 0 ? { ...header, metadata } : header, consumed: at };
};

export function encodeStreamReply(reply: StreamReply): Buffer {
  if (reply.ok) return Buffer.from([STREAM_STATUS.ok, 0, 0]);
  const body = Buffer.from(
    JSON.stringify({ code: reply.code, message: reply.message.slice(0, 1024) }),
    'utf8',
  );
  const head = Buffer.from([STREAM_STATUS.refused, 0, 0]);
  head.writeUInt16BE(body.length, 1);
  return Buffer.concat([head, body]);
}

const parseReply: Parse<StreamReply> = (buf) => {
  if (buf.length < 3) return { needBytes: 3 };
  const status = buf[0]!;
  const length = buf.readUInt16BE(1);
  if (buf.length < 3 + length) return { needBytes: 3 + length };
  if (status === STREAM_STATUS.ok && length === 0) return { value: { ok: true }, consumed: 3 };
  if (status !== STREAM_STATUS.refused) {
    throw new TunnelError('TUN_ERR_BAD_STREAM_HEADER', `unknown stream status ${status}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(buf.toString('utf8', 3, 3 + length));
  } catch {
    throw new TunnelError('TUN_ERR_BAD_STREAM_HEADER', 'stream refusal reason is not JSON');
  }
  // Any JSON is a reason, `null` too; an agent's `code` counts only as an own key of ERROR_CODES
  // (not `toString`…), and a `message` that is not a string is shown as JSON, since String() of
  // the peer's object can throw (found by bench/fuzz.js).
  const reason = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as {
    code?: unknown;
    message?: unknown;
  };
  const code =
    typeof reason.code === 'string' && Object.hasOwn(ERROR_CODES, reason.code)
      ? (reason.code as ErrorCode)
      : 'TUN_ERR_PROTOCOL';
  const message =
    typeof reason.message === 'string'
      ? reason.message
      : reason.message == null
        ? ''
        : JSON.stringify(reason.message);
  return { value: { ok: false, code, message }, consumed: 3 + length };
};

/**
 * Reads a stream header of either version. Rejects with TUN_ERR_BAD_STREAM_HEADER (malformed,
 * too long, cut short), TUN_ERR_UNKNOWN_STREAM_TYPE (a v2 type this build does not know: the
 * agent refuses that stream) or TUN_ERR_TIMEOUT.
 */
export function readStreamHeader(stream: Readable, timeoutMs: number): Promise<StreamHeader> {
  return readPrefix(stream, parseHeader, MAX_STREAM_HEADER_BYTES, timeoutMs);
}

export function readStreamReply(stream: Readable, timeoutMs: number): Promise<StreamReply> {
  return readPrefix(stream, parseReply, 3 + 0xffff, timeoutMs);
}

/**
 * Reads a prefix off a stream and puts back whatever follows it, so the caller can pipe the
 * rest untouched. Bounded in bytes and time. The stream is left paused: the caller must pipe()
 * or resume() it (a new 'data' listener alone does not restart an explicitly paused stream).
 * Chunks are joined only when the parser's next step has all it needs: O(bytes) copying,
 * however the peer splits the prefix.
 */
function readPrefix<T>(stream: Readable, parse: Parse<T>, maxBytes: number, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    let needBytes = 1;
    const finish = (err: Error | undefined, value?: T, rest?: Buffer): void => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onError);
      stream.pause();
      if (rest && rest.length > 0) stream.unshift(rest);
      if (err) reject(err);
      else resolve(value as T);
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      received += chunk.length;
      if (received < needBytes) return;
      const buffered = chunks.length === 1 ? chunk : Buffer.concat(chunks, received);
      chunks.length = 0;
      chunks.push(buffered);
      let parsed: ReturnType<Parse<T>>;
      try {
        parsed = parse(buffered);
      } catch (err) {
        finish(err as TunnelError);
        return;
      }
      if ('value' in parsed) finish(undefined, parsed.value, buffered.subarray(parsed.consumed));
      else if (parsed.needBytes > maxBytes) {
        finish(new TunnelError('TUN_ERR_BAD_STREAM_HEADER', `stream prefix longer than ${maxBytes} bytes`));
      } else needBytes = parsed.needBytes;
    };
    const onEnd = (): void =>
      finish(new TunnelError('TUN_ERR_BAD_STREAM_HEADER', 'stream ended before its header was complete'));
    const onError = (err: Error): void => finish(err);
    const timer = setTimeout(
      () => finish(new TunnelError('TUN_ERR_TIMEOUT', `stream header not received within ${timeoutMs} ms`)),
      timeoutMs,
    );
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('close', onEnd);
    stream.on('error', onError);
  });
}
