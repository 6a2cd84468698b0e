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
import type { Duplex } from 'node:stream';
import { encodeStreamReply, isTunnelError, readStreamHeader } from '@cluster-tunnel/protocol';
import type { StreamHeader, StreamType } from '@cluster-tunnel/protocol';
import { forwardAgentTls } from './agent-tls.js';
import {
  closedConnection,
  dialTarget,
  refuse,
  summary,
  whoOf,
  type ForwardOptions,
  type ForwardSummary,
  type StreamHandler,
} from './route-stream.js';
import { spliceTarget } from './target-splice.js';

export type { ForwardOptions, ForwardSummary } from './route-stream.js';

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
  const entry = options.routes.lookup(header.route);
  if (entry === undefined) {
    // The server asked for something this agent does not serve: refuse, never guess a target.
    log.warn(whoOf(header), 'route not configured');
    refuse(stream, 'TUN_ERR_UNKNOWN_ROUTE', `this agent serves no route ${header.route}`);
    return summary(startedAt, header, 'refused');
  }
  if (entry.mode === 'agent-tls') return forwardAgentTls(stream, header, entry, options, startedAt);
  const dialed = await dialTarget(stream, header, entry, options, startedAt);
  if ('done' in dialed) return dialed.done;
  const { socket } = dialed;
  const result = await spliceTarget(stream, socket, encodeStreamReply({ ok: true }));
  return closedConnection(log, header, startedAt, socket, result);
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
