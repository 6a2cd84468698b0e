/**
 * A request node:http could not parse, on any of the server's HTTP endpoints (the own name and
 * http routes): an HTTP answer with a coded body where the socket can still take one (431 for
 * headers over MAX_REQUEST_HEADER_BYTES, 400 otherwise), then the connection closes.
 */
import http from 'node:http';
import type { Duplex } from 'node:stream';

/** Request headers the server's HTTP endpoints read; larger ones get 431. */
export const MAX_REQUEST_HEADER_BYTES = 16 * 1024;

/** Answers `err` (node:http's 'clientError') on `socket`; returns the status sent, if any. */
export function answerBadRequest(err: NodeJS.ErrnoException, socket: Duplex): number | undefined {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return undefined;
  }
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
  const body = JSON.stringify({
    code: status === 431 ? 'TUN_ERR_LIMIT_EXCEEDED' : 'TUN_ERR_PROTOCOL',
    message:
      status === 431 ? `request headers over ${MAX_REQUEST_HEADER_BYTES} bytes` : 'malformed HTTP request',
  });
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
  return status;
}
