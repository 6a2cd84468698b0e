/**
 * The ClientHello a real TLS client (Node's) sends first, captured by a plain TCP server on
 * 127.0.0.1: seeds for the fuzzer, and the raw material of the tests' crafted hellos.
 */
import net from 'node:net';
import tls from 'node:tls';

/** Resolves with the first bytes `tls.connect(options)` sends; the client is dropped after. */
export function captureClientHello(options = {}) {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => {
      socket.once('data', (hello) => {
        resolve(hello);
        socket.destroy();
        server.close();
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const client = tls.connect({ ...options, port: server.address().port, host: '127.0.0.1' });
      client.on('error', () => {});
    });
  });
}
