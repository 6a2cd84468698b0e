/**
 * The bytes of one user connection, between what carries the user's side (a tunnel stream, or
 * the agent's TLS over one) and the target's socket: half-close kept both ways, an abnormal end
 * on either side resets the other, and it resolves once both have closed.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { TunnelError, spliceBytes } from '@cluster-tunnel/protocol';

export interface SpliceResult {
  reset: boolean;
  code: string | undefined;
}

/**
 * Writes `reply` (when given) to the user's side, forwards both ways, resolves once both sides
 * have closed. Both sides may be paused; the user's side may hold bytes already (a ClientHello).
 */
export function spliceTarget(stream: Duplex, socket: net.Socket, reply?: Buffer): Promise<SpliceResult> {
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
    if (reply !== undefined) stream.write(reply);
    spliceBytes(socket, stream);
    stream.resume(); // left paused by readStreamHeader
    socket.resume(); // a spare holding a greeting was left paused
  });
}
