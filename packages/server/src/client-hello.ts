import type { Socket } from 'node:net';
import { TunnelError } from '@cluster-tunnel/protocol';

/** TLS record content type of handshake records. */
const RECORD_TYPE_HANDSHAKE = 22;
const RECORD_HEADER_BYTES = 5;
/** Plaintext records carry at most 2^14 bytes (RFC 8446 §5.1). */
const MAX_RECORD_PAYLOAD_BYTES = 16_384;
const HANDSHAKE_HEADER_BYTES = 4;
const HANDSHAKE_TYPE_CLIENT_HELLO = 1;
const EXTENSION_SERVER_NAME = 0;
const EXTENSION_ALPN = 16;
const SERVER_NAME_TYPE_HOST = 0;
const MAX_HOSTNAME_CHARS = 253;
const HOSTNAME_LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;

/** Records a ClientHello may span: real clients send one; fragmenting hellos send a few. */
export const MAX_CLIENT_HELLO_RECORDS = 32;

/**
 * 16 KiB of ClientHello plus the record headers of up to 32 records. Real clients send one
 * record of under 2 KiB; the slack only admits clients that fragment the hello.
 */
export const DEFAULT_MAX_CLIENT_HELLO_BYTES =
  MAX_RECORD_PAYLOAD_BYTES + HANDSHAKE_HEADER_BYTES + MAX_CLIENT_HELLO_RECORDS * RECORD_HEADER_BYTES;

export type ClientHelloParse =
  /** `neededBytes`: parsing cannot progress until the buffer holds at least this many bytes. */
  | { complete: false; neededBytes: number }
  | { complete: true; serverName?: string; alpn: string[]; consumedBytes: number };

export interface ClientHello {
  /** Lower-cased SNI host name; undefined when the client sent none. */
  serverName: string | undefined;
  /** ALPN protocol ids in the client's order of preference. */
  alpn: string[];
  /** Every byte read from the socket, to be replayed verbatim (may extend past the hello). */
  bytes: Buffer;
}

export interface ReadClientHelloOptions {
  handshakeTimeoutMs: number;
  maxClientHelloBytes?: number;
}

function malformed(reason: string, details: Record<string, unknown> = {}): TunnelError {
  return new TunnelError('TUN_ERR_CLIENT_HELLO', `not a TLS ClientHello: ${reason}`, {
    details: { reason, ...details },
  });
}

/**
 * Parses the ClientHello at the start of `buf`, which may be cut anywhere: `complete: false`
 * means "need more bytes". The hello may be fragmented over several handshake records. Throws
 * TUN_ERR_CLIENT_HELLO as soon as the bytes seen so far cannot begin a ClientHello, or when the
 * hello would need more than `maxBytes` raw bytes or MAX_CLIENT_HELLO_RECORDS records.
 */
export function parseClientHello(buf: Buffer, maxBytes = DEFAULT_MAX_CLIENT_HELLO_BYTES): ClientHelloParse {
  return new ClientHelloParser(maxBytes).push(buf);
}

/**
 * The same parse, fed chunk by chunk as a socket delivers them. It keeps its place: a record
 * is looked at again only while it is incomplete, and only its own bytes are joined, so the
 * work is O(bytes) however the hello is split into reads and records (parsing from the start
 * on every read cost O(records²): 50 hellos of 1-byte records burned seconds of CPU).
 * Invariant: after push throws, the parser is done; push again throws the same error.
 */
export class ClientHelloParser {
  /** Received bytes from the start of the record being parsed on, in chunks not yet joined. */
  private tail: Buffer[] = [];
  private tailBytes = 0;
  /** Raw bytes of the complete records before `tail`. */
  private offset = 0;
  private records = 0;
  /** Handshake bytes of the complete records. */
  private readonly fragments: Buffer[] = [];
  private handshakeBytes = 0;
  private bodyLength: number | undefined;
  /** Relative to `offset`: the tail must hold this many bytes before parsing goes on. */
  private needBytes = 1;
  private failure: TunnelError | undefined;
  /** Once whole, the hello stays the answer: later bytes belong to the caller (TLS goes on). */
  private result: Extract<ClientHelloParse, { complete: true }> | undefined;

  constructor(private readonly maxBytes = DEFAULT_MAX_CLIENT_HELLO_BYTES) {}

  push(chunk: Buffer): ClientHelloParse {
    if (this.failure) throw this.failure;
    if (this.result) return this.result;
    if (chunk.length > 0) {
      this.tail.push(chunk);
      this.tailBytes += chunk.length;
    }
    if (this.tailBytes < this.needBytes)
      return { complete: false, neededBytes: this.offset + this.needBytes };
    try {
      return this.parse();
    } catch (err) {
      this.failure = err as TunnelError;
      throw err;
    }
  }

  private parse(): ClientHelloParse {
    let buf = this.tail.length === 1 ? this.tail[0]! : Buffer.concat(this.tail, this.tailBytes);
    for (;;) {
      const result = this.parseRecord(buf);
      if (typeof result === 'number') {
        // Keep what there is joined: the next join adds only the bytes still to come.
        this.tail = buf.length > 0 ? [buf] : [];
        this.tailBytes = buf.length;
        this.needBytes = result;
        return { complete: false, neededBytes: this.offset + result };
      }
      if (result.complete) {
        this.result = result;
        this.tail = [];
        return result;
      }
      buf = result.rest;
    }
  }

  /**
   * One record at the start of `buf`: the bytes needed before it can be judged (a number), the
   * whole hello, or the bytes after this record (the hello goes on in the next one).
   */
  private parseRecord(
    buf: Buffer,
  ): number | Extract<ClientHelloParse, { complete: true }> | { complete: false; rest: Buffer } {
    const offset = this.offset;
    // Check each header byte as soon as it arrives so that plain HTTP fails on its first byte.
    if (buf.length < 1) return 1;
    if (buf[0] !== RECORD_TYPE_HANDSHAKE) {
      throw malformed('record is not a handshake record', { offset, contentType: buf[0] });
    }
    if (buf.length < 2) return 2;
    if (buf[1] !== 3) throw malformed('record version is not TLS', { offset, versionMajor: buf[1] });
    if (buf.length < RECORD_HEADER_BYTES) return RECORD_HEADER_BYTES;
    const recordLength = buf.readUInt16BE(3);
    if (recordLength === 0 || recordLength > MAX_RECORD_PAYLOAD_BYTES) {
      throw malformed('record length out of range', { offset, recordLength });
    }
    if (this.records >= MAX_CLIENT_HELLO_RECORDS) {
      throw malformed(`ClientHello spans more than ${MAX_CLIENT_HELLO_RECORDS} records`, {
        maxRecords: MAX_CLIENT_HELLO_RECORDS,
      });
    }
    const payloadStart = offset + RECORD_HEADER_BYTES;
    // The hello is returned only once its last record is whole, so that record must fit too.
    if (payloadStart + recordLength > this.maxBytes) {
      throw malformed('ClientHello too large', {
        neededBytes: payloadStart + recordLength,
        maxBytes: this.maxBytes,
      });
    }
    const payload = buf.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + recordLength);
    this.checkHandshakeHeader(payload);
    if (payload.length < recordLength) {
      // Ask for the handshake header first, byte by byte as its checks need them (the type, then
      // the length), so a message that is no ClientHello, or one too large, is refused at once.
      const seen = this.handshakeBytes + payload.length;
      const headerMissing = (seen < 1 ? 1 : HANDSHAKE_HEADER_BYTES) - seen;
      if (this.bodyLength === undefined && headerMissing > 0) {
        return RECORD_HEADER_BYTES + Math.min(recordLength, payload.length + headerMissing);
      }
      return RECORD_HEADER_BYTES + recordLength;
    }
    this.records++;
    this.fragments.push(payload);
    this.handshakeBytes += payload.length;
    this.offset = payloadStart + recordLength;
    if (this.bodyLength !== undefined && this.handshakeBytes >= HANDSHAKE_HEADER_BYTES + this.bodyLength) {
      const message =
        this.fragments.length === 1 ? payload : Buffer.concat(this.fragments, this.handshakeBytes);
      const hello = parseClientHelloBody(
        message.subarray(HANDSHAKE_HEADER_BYTES, HANDSHAKE_HEADER_BYTES + this.bodyLength),
      );
      return { complete: true, ...hello, consumedBytes: this.offset };
    }
    return { complete: false, rest: buf.subarray(RECORD_HEADER_BYTES + recordLength) };
  }

  /**
   * The handshake message's type and length, from its first 4 bytes, as soon as they are in
   * (they may span records, and `partial` may be a record still arriving).
   */
  private checkHandshakeHeader(partial: Buffer): void {
    if (this.bodyLength !== undefined) return;
    const seen = this.handshakeBytes + partial.length;
    if (seen < 1) return;
    const first = this.fragments.length > 0 ? this.fragments[0]! : partial;
    if (first[0] !== HANDSHAKE_TYPE_CLIENT_HELLO) {
      throw malformed('first handshake message is not a ClientHello', { messageType: first[0] });
    }
    if (seen < HANDSHAKE_HEADER_BYTES) return;
    const head = Buffer.concat([...this.fragments, partial]).subarray(0, HANDSHAKE_HEADER_BYTES);
    this.bodyLength = head.readUIntBE(1, 3);
    // Lower bound on the raw bytes this hello needs: headers seen so far plus the message.
    const neededBytes = (this.records + 1) * RECORD_HEADER_BYTES + HANDSHAKE_HEADER_BYTES + this.bodyLength;
    if (neededBytes > this.maxBytes) {
      throw malformed('ClientHello too large', { neededBytes, maxBytes: this.maxBytes });
    }
  }
}

/** A bounds-checked cursor: every read past the end is a malformed hello. */
class Reader {
  private offset = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}
  get remaining(): number {
    return this.buf.length - this.offset;
  }
  take(length: number): Buffer {
    if (length > this.remaining)
      throw malformed(`${this.what} truncated`, { needed: length, remaining: this.remaining });
    const out = this.buf.subarray(this.offset, this.offset + length);
    this.offset += length;
    return out;
  }
  u8(): number {
    return this.take(1).readUInt8(0);
  }
  u16(): number {
    return this.take(2).readUInt16BE(0);
  }
  vector8(): Reader {
    return new Reader(this.take(this.u8()), this.what);
  }
  vector16(): Reader {
    return new Reader(this.take(this.u16()), this.what);
  }
}

function parseClientHelloBody(body: Buffer): { serverName?: string; alpn: string[] } {
  const reader = new Reader(body, 'ClientHello');
  reader.take(2 + 32); // legacy_version, random
  const sessionId = reader.vector8();
  if (sessionId.remaining > 32) throw malformed('session id longer than 32 bytes');
  const cipherSuites = reader.vector16();
  if (cipherSuites.remaining < 2 || cipherSuites.remaining % 2 !== 0)
    throw malformed('bad cipher suite list');
  if (reader.vector8().remaining < 1) throw malformed('empty compression method list');
  const result: { serverName?: string; alpn: string[] } = { alpn: [] };
  // Extensions are optional before TLS 1.2; without them there is no SNI and no ALPN.
  if (reader.remaining === 0) return result;
  const extensions = new Reader(reader.take(reader.u16()), 'extension');
  if (reader.remaining !== 0)
    throw malformed('bytes after the extension list', { trailingBytes: reader.remaining });
  const seen = new Set<number>();
  while (extensions.remaining > 0) {
    const type = extensions.u16();
    const data = extensions.vector16();
    if (seen.has(type)) throw malformed('duplicate extension', { extensionType: type });
    seen.add(type);
    if (type === EXTENSION_SERVER_NAME) result.serverName = parseServerName(data);
    else if (type === EXTENSION_ALPN) result.alpn = parseAlpn(data);
  }
  return result;
}

function parseServerName(data: Reader): string | undefined {
  const list = data.vector16();
  if (data.remaining !== 0 || list.remaining === 0) throw malformed('bad server_name extension');
  let hostName: string | undefined;
  while (list.remaining > 0) {
    const nameType = list.u8();
    const name = list.vector16();
    if (nameType !== SERVER_NAME_TYPE_HOST) continue; // unknown name types are skipped (RFC 6066 §3)
    if (hostName !== undefined) throw malformed('more than one host_name in server_name');
    hostName = validateHostName(name.take(name.remaining));
  }
  return hostName;
}

function validateHostName(raw: Buffer): string {
  // latin1 maps every byte to one char, so a non-ASCII byte cannot hide inside a valid-looking string.
  const name = raw.toString('latin1').toLowerCase();
  const valid =
    name.length > 0 &&
    name.length <= MAX_HOSTNAME_CHARS &&
    name.split('.').every((label) => HOSTNAME_LABEL.test(label));
  if (!valid) throw malformed('invalid SNI host name', { serverName: JSON.stringify(name.slice(0, 64)) });
  return name;
}

function parseAlpn(data: Reader): string[] {
  const list = data.vector16();
  if (data.remaining !== 0 || list.remaining === 0) throw malformed('bad ALPN extension');
  const protocols: string[] = [];
  while (list.remaining > 0) {
    const protocol = list.vector8();
    if (protocol.remaining === 0) throw malformed('empty ALPN protocol id');
    protocols.push(protocol.take(protocol.remaining).toString('latin1'));
  }
  return protocols;
}

/**
 * Reads from `socket` until a whole ClientHello has arrived, without losing a byte: the caller
 * gets every byte read (`bytes`) to replay upstream or to `unshift` before wrapping the socket
 * in a TLS server. On every outcome the socket is left paused with none of our listeners on it
 * and is not destroyed: the caller owns it (and must keep an 'error' listener on it).
 */
export async function readClientHello(socket: Socket, opts: ReadClientHelloOptions): Promise<ClientHello> {
  const maxBytes = opts.maxClientHelloBytes ?? DEFAULT_MAX_CLIENT_HELLO_BYTES;
  if (socket.destroyed || socket.readableEnded) {
    throw new TunnelError('TUN_ERR_TRANSPORT_CLOSED', 'connection closed before the ClientHello');
  }
  return new Promise<ClientHello>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let readBytes = 0;
    const parser = new ClientHelloParser(maxBytes);
    const timer = setTimeout(onTimeout, opts.handshakeTimeoutMs);

    function settle(err: TunnelError | undefined, hello?: ClientHello): void {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.off('error', onError);
      // Paused, so bytes arriving after the hello stay buffered in the socket for the caller.
      socket.pause();
      if (err) reject(err);
      else resolve(hello as ClientHello);
    }
    function onData(chunk: Buffer): void {
      chunks.push(chunk);
      readBytes += chunk.length;
      let parsed: ClientHelloParse;
      try {
        parsed = parser.push(chunk);
      } catch (err) {
        settle(err as TunnelError);
        return;
      }
      if (parsed.complete) {
        // Joined once: every byte read, for the caller to replay.
        const bytes = chunks.length === 1 ? chunk : Buffer.concat(chunks, readBytes);
        settle(undefined, { serverName: parsed.serverName, alpn: parsed.alpn, bytes });
      } else if (readBytes >= maxBytes) {
        settle(malformed('ClientHello too large', { readBytes, maxBytes }));
      }
    }
    function onEnd(): void {
      settle(
        new TunnelError('TUN_ERR_TRANSPORT_CLOSED', 'connection ended before the ClientHello was complete', {
          details: { readBytes },
        }),
      );
    }
    function onClose(): void {
      settle(
        new TunnelError('TUN_ERR_TRANSPORT_CLOSED', 'connection closed before the ClientHello', {
          details: { readBytes },
        }),
      );
    }
    function onError(cause: Error): void {
      settle(
        new TunnelError('TUN_ERR_TRANSPORT_CLOSED', 'connection failed before the ClientHello', {
          cause,
          details: { readBytes },
        }),
      );
    }
    function onTimeout(): void {
      settle(
        new TunnelError(
          'TUN_ERR_HANDSHAKE_TIMEOUT',
          `no complete ClientHello within ${opts.handshakeTimeoutMs} ms`,
          {
            details: { readBytes, handshakeTimeoutMs: opts.handshakeTimeoutMs },
          },
        ),
      );
    }

    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
    socket.on('data', onData);
    socket.resume();
  });
}
