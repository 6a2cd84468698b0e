/**
 * The first bytes of every user stream the server opens to an agent, and the agent's one-frame
 * answer. Header: u8 version (1) | u8 n | n bytes route label | u8 m | m bytes user address.
 * Reply: u8 status (0 ok, 1 refused) | u16 length | JSON {code, message} when refused. The server
 * sends user bytes right after the header (no round trip); the agent answers once it has dialed
 * its target, then the stream carries raw bytes both ways. A refusal is followed by RST, and the
 * reply tells the server why (RST itself carries no reason).
 */
import type { Readable } from 'node:stream';
import { ERROR_CODES, TunnelError, type ErrorCode } from '../errors.js';

export const STREAM_HEADER_VERSION = 1;
export const STREAM_STATUS = {
  /** The agent reached the target; raw bytes follow. */
  ok: 0,
  /** The agent refused or failed; a JSON reason follows, then RST. */
  refused: 1,
} as const;

export interface StreamHeader {
  /** Hostname label of the route, e.g. `cluster-u1` or `cluster-u1-dashboard`. */
  route: string;
  /** The user's address as the server saw it (`ip:port`), for the agent's logs. */
  remoteAddress: string;
}

export type StreamReply = { ok: true } | { ok: false; code: ErrorCode; message: string };

export function encodeStreamHeader(header: StreamHeader): Buffer {
  const route = Buffer.from(header.route, 'utf8');
  const remote = Buffer.from(header.remoteAddress, 'utf8').subarray(0, 255);
  if (route.length === 0 || route.length > 255) {
    throw new TunnelError('TUN_ERR_BAD_STREAM_HEADER', 'route label must be 1-255 bytes');
  }
  return Buffer.concat([
    Buffer.from([STREAM_HEADER_VERSION, route.length]),
    route,
    Buffer.from([remote.length]),
    remote,
  ]);
}

/**
 * A prefix parser: the value and the bytes it took, or how many bytes it needs before it can
 * get further (always more than it was given), so the reader joins chunks only that often.
 */
type Parse<T> = (buf: Buffer) => { value: T; consumed: number } | { needBytes: number };

const parseHeader: Parse<StreamHeader> = (buf) => {
  if (buf.length < 2) return { needBytes: 2 };
  if (buf[0] !== STREAM_HEADER_VERSION) {
    throw new TunnelError('TUN_ERR_BAD_STREAM_HEADER', `unknown stream header version ${buf[0]}`);
  }
  const n = buf[1]!;
  if (n === 0) throw new TunnelError('TUN_ERR_BAD_STREAM_HEADER', 'empty route label');
  if (buf.length < 3 + n) return { needBytes: 3 + n };
  const m = buf[2 + n]!;
  if (buf.length < 3 + n + m) return { needBytes: 3 + n + m };
  return {
    value: {
      route: buf.toString('utf8', 2, 2 + n),
      remoteAddress: buf.toString('utf8', 3 + n, 3 + n + m),
    },
    consumed: 3 + n + m,
  };
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

export function readStreamHeader(stream: Readable, timeoutMs: number): Promise<StreamHeader> {
  return readPrefix(stream, parseHeader, 2 + 255 + 1 + 255, timeoutMs);
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
