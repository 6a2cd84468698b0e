/**
 * What every handler of a stream the server opened shares (forward.ts, agent-tls.ts): its
 * options, its summary, the coded refusal, the dial of the route's target (refused with
 * TUN_ERR_DIAL_FAILED when it fails, so the server tries another agent) and the closing line.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { encodeStreamReply } from '@cluster-tunnel/protocol';
import type { ErrorCode, StreamHeader, StreamType } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { AgentMetrics } from './metrics.js';
import type { RouteCertificate } from './route-certificate.js';
import type { RouteEntry, RouteTable } from './route-table.js';
import type { TargetDialer } from './target-dialer.js';
import type { SpliceResult } from './target-splice.js';

export interface ForwardOptions {
  routes: RouteTable;
  logger: Logger;
  /** How long the server may take to send the stream header (and a user its TLS handshake, agent-tls). */
  headerTimeoutMs: number;
  /** Connects to targets (bounded by its dialTimeoutMs), with spares for busy routes. */
  dialer: TargetDialer;
  /** What agent-tls routes end users' TLS with; absent when the agent has no agent-tls route. */
  routeCertificate?: RouteCertificate | undefined;
  metrics?: AgentMetrics | undefined;
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
export type StreamHandler = (
  stream: Duplex,
  header: StreamHeader,
  options: ForwardOptions,
  startedAt: number,
) => Promise<ForwardSummary>;

/** Who a user connection is, on each of its log lines. */
export type Who = Readonly<Record<string, unknown>>;

export function whoOf(header: StreamHeader): Who {
  const { route, remoteAddress, metadata } = header;
  return metadata ? { route, remoteAddress, metadata } : { route, remoteAddress };
}

export function summary(
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

/** Answers a refusal, then resets the stream (RST carries no reason; the reply does). */
export function refuse(stream: Duplex, code: ErrorCode, message: string): void {
  if (stream.destroyed) return;
  stream.write(encodeStreamReply({ ok: false, code, message }), () => stream.destroy());
}

/**
 * The route's target connected, or the stream refused (target unreachable) or gone (the user
 * left while we dialed): then the summary to return. `alpn`: what to offer an agent-tls target.
 */
export async function dialTarget(
  stream: Duplex,
  header: StreamHeader,
  entry: RouteEntry,
  options: ForwardOptions,
  startedAt: number,
  alpn?: readonly string[],
): Promise<{ socket: net.Socket } | { done: ForwardSummary }> {
  const log = options.logger;
  const who = whoOf(header);
  const dialed = await options.dialer.dial(entry, alpn).catch((err: NodeJS.ErrnoException) => err);
  if (dialed instanceof Error) {
    const errno = dialed.code ?? 'EUNKNOWN';
    log.warn({ ...who, target: entry.target, errno }, 'target dial failed');
    refuse(stream, 'TUN_ERR_DIAL_FAILED', `cannot connect to ${entry.target}: ${errno}`);
    return { done: summary(startedAt, header, 'refused') };
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
    return { done: summary(startedAt, header, 'reset') };
  }
  return { socket };
}

/** The summary of a spliced user connection, and its closing line. */
export function closedConnection(
  log: Logger,
  header: StreamHeader,
  startedAt: number,
  target: net.Socket,
  result: SpliceResult,
): ForwardSummary {
  const closed: ForwardSummary = {
    ...summary(startedAt, header, result.reset ? 'reset' : 'closed'),
    bytesIn: target.bytesWritten,
    bytesOut: target.bytesRead,
  };
  const { bytesIn, bytesOut, durationMs } = closed;
  log.info(
    {
      ...whoOf(header),
      bytesIn,
      bytesOut,
      durationMs,
      ...(result.reset ? { reset: true, code: result.code } : {}),
    },
    'user connection closed',
  );
  return closed;
}
