/**
 * The byte-moving half of a forwarder: a TCP socket and a yamux stream joined both ways with
 * backpressure (a side that cannot take more pauses the other) and half-close (one side's end
 * ends the other's writing). Errors, resets and accounting differ between the server and the
 * agent, so each caller wires those itself.
 *
 * Hand-written instead of two pipe() calls: fewer listeners and closures per held connection
 * (bench S5 holds 10,000 of them).
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** `onStreamChunk` sees every chunk going from the stream to the socket (byte counts). */
export function spliceBytes(socket: Socket, stream: Duplex, onStreamChunk?: (chunk: Buffer) => void): void {
  socket.on('data', (chunk: Buffer) => {
    if (!stream.write(chunk)) socket.pause();
  });
  // The stream delivers its payload as the peer link's TLS records arrive (16 KiB each, several
  // per read); corked until the end of the tick, they leave in fewer writes.
  let corked = false;
  const uncork = (): void => {
    corked = false;
    socket.uncork();
  };
  stream.on('data', (chunk: Buffer) => {
    onStreamChunk?.(chunk);
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    if (!socket.write(chunk)) stream.pause();
  });
  stream.on('drain', () => socket.resume());
  socket.on('drain', () => stream.resume());
  socket.on('end', () => stream.end());
  stream.on('end', () => socket.end());
}
