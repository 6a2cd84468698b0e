/**
 * An agent-tls user connection (docs/ARCHITECTURE.md, "Route modes"): the server forwarded the
 * user's TLS unread; the agent ends it here, inside the cluster, with its route certificate
 * (route-certificate.ts), opens its own TLS to the target, verified against the route's `ca` and
 * `serverName`, and copies the plaintext both ways. The user's credentials (a bearer token, an
 * exec plugin's token) travel inside and reach the target untouched; a client certificate cannot,
 * since the user's TLS ends here.
 *
 * Order, so that every failure that another agent might not have is a coded refusal before the
 * reply (the server then tries the next agent): a valid route certificate, then the target's TLS;
 * only then the reply and the user's handshake. The two legs agree on the application protocol:
 * the target is offered the user's ALPN list (stream metadata `alpn`, from the ClientHello the
 * server read) and the user is answered with the target's choice.
 */
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { encodeStreamReply, type StreamHeader } from '@cluster-tunnel/protocol';
import type { RouteEntry } from './route-table.js';
import {
  closedConnection,
  dialTarget,
  refuse,
  summary,
  whoOf,
  type ForwardOptions,
  type ForwardSummary,
} from './route-stream.js';
import { spliceTarget } from './target-splice.js';

/** The most ALPN ids taken from the metadata (a client offers two or three). */
const MAX_ALPN_IDS = 8;

export async function forwardAgentTls(
  stream: Duplex,
  header: StreamHeader,
  entry: RouteEntry,
  options: ForwardOptions,
  startedAt: number,
): Promise<ForwardSummary> {
  const log = options.logger;
  const certificate = options.routeCertificate?.current;
  if (certificate === undefined) {
    log.warn(
      { ...whoOf(header), code: 'TUN_ERR_ROUTE_CERT_PENDING' },
      'no route certificate yet: user refused',
    );
    refuse(stream, 'TUN_ERR_ROUTE_CERT_PENDING', 'this agent holds no valid route certificate yet');
    return summary(startedAt, header, 'refused');
  }
  const alpn = alpnOffer(header.metadata?.alpn);
  const dialed = await dialTarget(stream, header, entry, options, startedAt, alpn);
  if ('done' in dialed) return dialed.done;
  const target = dialed.socket;
  // The reply travels on the tunnel stream ahead of our TLS bytes; the server waits for it.
  stream.write(encodeStreamReply({ ok: true }));
  const chosen = target instanceof TLSSocket ? target.alpnProtocol : false;
  const user = new TLSSocket(stream, {
    isServer: true,
    secureContext: certificate.secureContext,
    requestCert: false,
    ...(typeof chosen === 'string' ? { ALPNProtocols: [chosen] } : {}),
  });
  const failure = await handshake(user, options.headerTimeoutMs);
  if (failure !== undefined) {
    options.metrics?.agentTlsHandshakeFailures.inc();
    log.info({ ...whoOf(header), err: failure }, 'user TLS handshake failed');
    user.destroy();
    stream.destroy();
    target.destroy();
    return summary(startedAt, header, 'reset');
  }
  // A reset under the user's TLS (the tunnel stream) is seen here as that TLS closing uncleanly.
  stream.once('close', () => {
    if (!user.destroyed && !(stream.readableEnded && stream.writableFinished)) user.destroy();
  });
  const result = await spliceTarget(user, target);
  if (result.reset) stream.destroy();
  return closedConnection(log, header, startedAt, target, result);
}

/** The user's ALPN offer from the `alpn` metadata (`h2,http/1.1`); undefined when none. */
function alpnOffer(value: string | undefined): string[] | undefined {
  const ids = (value ?? '')
    .split(',')
    .filter((id) => id !== '')
    .slice(0, MAX_ALPN_IDS);
  return ids.length === 0 ? undefined : ids;
}

/** Resolves undefined once the user's handshake is done, or why it failed (error, close, timeout). */
function handshake(user: TLSSocket, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const done = (why: string | undefined): void => {
      clearTimeout(timer);
      user.off('secure', onSecure);
      user.off('error', onError);
      user.off('close', onClose);
      resolve(why);
    };
    const onSecure = (): void => done(undefined);
    const onError = (err: NodeJS.ErrnoException): void => done(err.code ?? err.message);
    const onClose = (): void => done('closed before the handshake ended');
    const timer = setTimeout(() => done(`no handshake within ${timeoutMs} ms`), timeoutMs);
    user.once('secure', onSecure);
    user.once('error', onError);
    user.once('close', onClose);
  });
}
