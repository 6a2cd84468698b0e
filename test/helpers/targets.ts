/**
 * Route targets for tests: an echo server on 127.0.0.1 port 0 (TLS with the test credentials
 * when asked), which ends its side after the user's FIN. Stopped when the test finishes.
 */
import net from 'node:net';
import tls from 'node:tls';
import { onTestFinished } from 'vitest';
import { tlsCredentials } from './transports.js';

export async function echoTarget(o: { tls?: boolean } = {}): Promise<number> {
  const onSocket = (socket: net.Socket): void => {
    socket.on('error', () => undefined);
    socket.pipe(socket);
  };
  const server = o.tls
    ? tls.createServer({ ...(await tlsCredentials()), allowHalfOpen: true }, onSocket)
    : net.createServer({ allowHalfOpen: true }, onSocket);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  onTestFinished(() => {
    server.close();
  });
  return (server.address() as net.AddressInfo).port;
}
