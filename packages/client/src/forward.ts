/**
 * One stream the server opened: a stream header (type, route label, user address, metadata),
 * then what the type says. The header's type picks the handler from STREAM_HANDLERS; a type this
 * agent does not know is refused with a coded reply (TUN_ERR_UNKNOWN_STREAM_TYPE) and the
 * session goes on. Today every stream is a `route` stream, a user connection: the agent looks
 * the label up in its own route table, dials the configured target (or takes a spare connection
 * to it, target-dialer.ts), answers with a one-frame reply and splices the two byte streams:
 *
 * - bytes that arrive before the dial completes wait in the stream (readStreamHeader leaves it
 *   paused), held back by the yamux window, and go to the target before the reply is written;
 * - half-close is preserved: target EOF → stream FIN (end), stream FIN → target EOF;
 * - an abnormal end on one side (RST, socket error, session loss) resets the other.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import {
  TunnelError,
  encodeStreamReply,
  isTunnelError,
  readStreamHeader,
  spliceBytes,
} from '@cluster-tunnel/protocol';
import type { ErrorCode, StreamHeader, StreamType } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { RouteTable } from './route-table.js';
import type { TargetDialer } from './target-dialer.js';

export interface ForwardOptions {
  routes: RouteTable;
  logger: Logger;
  /** How long the server may take to send the stream header. */
  headerTimeoutMs: number;
  /** Connects to targets (bounded by its dialTimeoutMs), with spares for busy routes. */
  dialer: TargetDialer;
}

export interface ForwardSummary {
  /** The stream type, when the header could be read. */
  type: StreamType | undefined;
  /** The route label, when the header could be read. */
  route: string | undefined;
  outcome: 'closed' | 'reset' | 'refused' | 'bad-header';
  /** Bytes from the user to the target. */
  bytesIn: number;
  /** Bytes from the target to the user. */
  bytesOut: number;
  durationMs: number;
}

/** Serves one stream whose header has been read; never rejects. */
type StreamHandler = (
  stream: Duplex,
  header: StreamHeader,
  options: ForwardOptions,
  startedAt: number,
) => Promise<ForwardSummary>;

function summary(
  startedAt: number,
  header: StreamHeader | undefined,
  outcome: ForwardSummary['outcome'],
): ForwardSummary {
  return {
    type: header?.type,
    route: header?.route,
    outcome,
    bytesIn: 0,
    bytesOut: 0,
    durationMs: Math.round(performance.now() - startedAt),
  };
}

/** Handles one inbound stream to its end; never rejects. */
export async function forwardStream(stream: Duplex, options: ForwardOptions): Promise<ForwardSummary> {
  const startedAt = performance.now();
  // A write to a stream the peer already reset fails with 'error': it must never crash the agent.
  stream.on('error', ignoreError);
  let header: StreamHeader;
  try {
    header = await readStreamHeader(stream, options.headerTimeoutMs);
  } catch (err) {
    if (isTunnelError(err, 'TUN_ERR_UNKNOWN_STREAM_TYPE')) {
      // A newer server's stream this agent cannot serve: say why, and only this stream ends.
      options.logger.warn({ code: err.code, err: err.message }, 'unknown stream type');
      refuse(stream, err.code, err.message);
      return summary(startedAt, undefined, 'refused');
    }
    options.logger.warn({ err }, 'bad stream header');
    stream.destroy();
    return summary(startedAt, undefined, 'bad-header');
  }
  return STREAM_HANDLERS[header.type](stream, header, options, startedAt);
}

/** A user connection for a route: dial the route's target, reply, splice. */
const forwardRoute: StreamHandler = async (stream, header, options, startedAt) => {
  // Fields on each line rather than a child logger: pino builds (and redacts) a child's
  // bindings at once, a cost per user connection even when nothing is logged (bench S4).
  const log = options.logger;
  const { route, remoteAddress, metadata } = header;
  const who = metadata ? { route, remoteAddress, metadata } : { route, remoteAddress };
  const entry = options.routes.lookup(header.route);
  if (entry === undefined) {
    // The server asked for something this agent does not serve: refuse, never guess a target.
    log.warn(who, 'route not configured');
    refuse(stream, 'TUN_ERR_UNKNOWN_ROUTE', `this agent serves no route ${header.route}`);
    return summary(startedAt, header, 'refused');
  }
  const dialed = await options.dialer.dial(entry).catch((err: NodeJS.ErrnoException) => err);
  if (dialed instanceof Error) {
    const errno = dialed.code ?? 'EUNKNOWN';
    log.warn({ ...who, target: entry.target, errno }, 'target dial failed');
    refuse(stream, 'TUN_ERR_DIAL_FAILED', `cannot connect to ${entry.target}: ${errno}`);
    return summary(startedAt, header, 'refused');
  }
  const { socket, spare } = dialed;
  if (log.isLevelEnabled('debug')) {
    const streamId = (stream as { id?: number }).id;
    log.debug({ ...who, target: entry.target, streamId, spare }, 'user connection opened');
  }
  if (stream.destroyed) {
    // The user (or the session) gave up while we dialed.
    socket.destroy();
    log.debug(who, 'user connection gone before the target answered');
    return summary(startedAt, header, 'reset');
  }
  const result = await splice(stream, socket, encodeStreamReply({ ok: true }));
  const closed: ForwardSummary = {
    ...summary(startedAt, header, result.reset ? 'reset' : 'closed'),
    bytesIn: socket.bytesWritten,
    bytesOut: socket.bytesRead,
  };
  const { bytesIn, bytesOut, durationMs } = closed;
  log.info(
    { ...who, bytesIn, bytesOut, durationMs, ...(result.reset ? { reset: true, code: result.code } : {}) },
    'user connection closed',
  );
  return closed;
};

/** What the agent does with each stream type (STREAM_TYPES): a new type is one handler here. */
/** A data-path probe: connect to the route's target, close, answer how long it took. */
const forwardProbe: StreamHandler = async (stream, header, options, startedAt) => {
  const entry = options.routes.lookup(header.route);
  if (entry === undefined) {
    refuse(stream, 'TUN_ERR_UNKNOWN_ROUTE', `this agent serves no route ${header.route}`);
    return summary(startedAt, header, 'refused');
  }
  let dialMs: number;
  try {
    dialMs = await options.dialer.probe(entry);
  } catch (err) {
    const errno = (err as NodeJS.ErrnoException).code ?? 'EUNKNOWN';
    options.logger.debug({ route: header.route, target: entry.target, errno }, 'probe: target unreachable');
    refuse(stream, 'TUN_ERR_DIAL_FAILED', `cannot connect to ${entry.target}: ${errno}`);
    return summary(startedAt, header, 'refused');
  }
  stream.end(
    Buffer.concat([
      encodeStreamReply({ ok: true }),
      Buffer.from(JSON.stringify({ dialMs: Math.round(dialMs * 10) / 10 })),
    ]),
  );
  return summary(startedAt, header, 'closed');
};

const STREAM_HANDLERS: { readonly [T in StreamType]: StreamHandler } = {
  route: forwardRoute,
  probe: forwardProbe,
};

function ignoreError(): void {}

/** Answers a refusal, then resets the stream (RST carries no reason; the reply does). */
function refuse(stream: Duplex, code: ErrorCode, message: string): void {
  if (stream.destroyed) return;
  stream.write(encodeStreamReply({ ok: false, code, message }), () => stream.destroy());
}

interface SpliceResult {
  reset: boolean;
  code: string | undefined;
}

/** Writes the ok reply, forwards both ways, resolves once both sides have closed. */
function splice(stream: Duplex, socket: net.Socket, reply: Buffer): Promise<SpliceResult> {
  return new Promise((resolve) => {
    let code: string | undefined;
    let reset = false;
    let open = 2;
    const noteError = (err: Error & { code?: string }): void => {
      code ??= err instanceof TunnelError ? err.code : (err.code ?? err.message);
    };
    const cleanClose = (s: Duplex): boolean => s.readableEnded && s.writableFinished;
    function onStreamClose(): void {
      if (!cleanClose(stream)) {
        reset = true;
        code ??= (stream as { resetReason?: TunnelError }).resetReason?.code ?? 'TUN_ERR_STREAM_RESET';
        // Tell the target with a TCP RST too: it must not take a truncated exchange for a complete
        // one. A TLS target's socket has no TCP handle to reset (resetAndDestroy throws): it is
        // destroyed without close_notify, which TLS peers read as truncation.
        if (!socket.destroyed) {
          if (socket instanceof TLSSocket) socket.destroy();
          else socket.resetAndDestroy();
        }
      }
      if (--open === 0) resolve({ reset, code });
    }
    function onSocketClose(hadError: boolean): void {
      if (hadError || !cleanClose(socket)) {
        reset = true;
        code ??= 'ECONNRESET';
        stream.destroy();
      }
      if (--open === 0) resolve({ reset, code });
    }
    stream.on('error', noteError);
    socket.on('error', noteError);
    stream.once('close', onStreamClose);
    socket.once('close', onSocketClose);
    // What came with the header (a ClientHello) goes to the target first: the user waits for
    // the target's answer to it, while the reply only has to reach the server before the
    // target's first byte does (it is written below, ahead of any of them).
    const early = stream.read() as Buffer | null;
    if (early !== null) socket.write(early);
    stream.write(reply);
    spliceBytes(socket, stream);
    stream.resume(); // left paused by readStreamHeader
    socket.resume(); // a spare holding a greeting was left paused
  });
}
