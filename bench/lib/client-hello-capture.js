/**
 * The ClientHello a real TLS client (Node's) sends first, captured by a plain TCP server on
 * 127.0.0.1: seeds for the fuzzer, and the raw material of the tests' crafted hellos.
 */
import net from 'node:net';
import tls from 'node:tls';

/**
 * Where the records that carry the whole ClientHello end in `bytes`, or 0 while it is
 * incomplete: record headers give each record's length, the handshake header the hello's.
 */
function helloEnd(bytes) {
  let offset = 0;
  let payload = 0;
  let needed = -1;
  while (offset + 5 <= bytes.length) {
    const length = bytes.readUInt16BE(offset + 3);
    if (offset + 5 + length > bytes.length) return 0;
    if (needed < 0) needed = 4 + bytes.readUIntBE(offset + 6, 3);
    payload += length;
    offset += 5 + length;
    if (payload >= needed) return offset;
  }
  return 0;
}

/**
 * Resolves with the records `tls.connect(options)` sends first, exactly those that carry its
 * ClientHello (one, or more for a large hello), however TCP split them; the client is dropped.
 */
export function captureClientHello(options = {}) {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => {
      const chunks = [];
      let length = 0;
      socket.on('data', (chunk) => {
        chunks.push(chunk);
        length += chunk.length;
        const bytes = Buffer.concat(chunks, length);
        const end = helloEnd(bytes);
        if (end === 0) return;
        resolve(bytes.subarray(0, end));
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
