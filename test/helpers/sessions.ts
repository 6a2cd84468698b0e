/**
 * Small helpers around a YamuxSession that the protocol tests share.
 */
import type { TunnelError, YamuxSession, YamuxStream } from '@cluster-tunnel/protocol';

/** Echoes every inbound stream back to its opener, ending when the opener ends; stream errors are ignored. */
export function echoStreams(session: YamuxSession): void {
  session.on('stream', (stream: YamuxStream) => {
    stream.on('error', () => undefined);
    stream.pipe(stream);
  });
}

/**
 * Resolves with the session's 'close' argument. Not `events.once`: that also listens for
 * 'error', and a session emits 'error' only when someone listens, which would change what is tested.
 */
export function closeOf(session: YamuxSession): Promise<TunnelError | undefined> {
  return new Promise((resolve) => session.once('close', (err?: TunnelError) => resolve(err)));
}
