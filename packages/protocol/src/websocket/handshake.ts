/**
 * The RFC 6455 opening handshake (§4), both sides, with node:http doing the HTTP: the agent sends
 * a GET with `Upgrade: websocket`, the server answers `101 Switching Protocols`, and from then on
 * the socket carries frames (websocket/duplex.ts). We offer and accept no extension and no subprotocol,
 * so neither side has anything to negotiate beyond proving it speaks WebSocket (key → accept).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { TunnelError } from '../errors.js';

/** The only protocol version RFC 6455 defines; a server names it when it refuses another (426). */
export const WEBSOCKET_VERSION = '13';
// RFC 6455 §1.3: the fixed GUID the accept hash is computed with.
const ACCEPT_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
// A Sec-WebSocket-Key is the base64 of 16 bytes: 22 significant characters and '=='.
const KEY_PATTERN = /^[+/0-9A-Za-z]{22}==$/;

/** A fresh Sec-WebSocket-Key: 16 random bytes, base64 (RFC 6455 §4.1: chosen anew per connection). */
export function createWebSocketKey(): string {
  return randomBytes(16).toString('base64');
}

/** The Sec-WebSocket-Accept a server must answer `key` with. */
export function webSocketAccept(key: string): string {
  return createHash('sha1')
    .update(key + ACCEPT_GUID)
    .digest('base64');
}

/** Request headers for the agent's upgrade (the caller adds Authorization and Host comes from the URL). */
export function upgradeRequestHeaders(key: string): Record<string, string> {
  return {
    Connection: 'Upgrade',
    Upgrade: 'websocket',
    'Sec-WebSocket-Version': WEBSOCKET_VERSION,
    'Sec-WebSocket-Key': key,
  };
}

/**
 * Checks an HTTP upgrade request as RFC 6455 §4.2.1 asks a server to, and returns its
 * Sec-WebSocket-Key. Throws TUN_ERR_PROTOCOL with `details.status`, the status to refuse with:
 * 405 for a method other than GET, 426 for a version other than 13 (the refusal must then name
 * 13 in Sec-WebSocket-Version), 400 for anything else.
 */
export function checkUpgradeRequest(req: IncomingMessage): string {
  if (req.method !== 'GET') throw requestError(405, `the upgrade must be a GET, not ${req.method}`);
  if (req.httpVersionMajor < 1 || (req.httpVersionMajor === 1 && req.httpVersionMinor < 1)) {
    throw requestError(400, `the upgrade must be HTTP/1.1 or later, not HTTP/${req.httpVersion}`);
  }
  if (!hasToken(req.headers.upgrade, 'websocket')) throw requestError(400, 'Upgrade: websocket is missing');
  if (!hasToken(req.headers.connection, 'upgrade')) throw requestError(400, 'Connection: Upgrade is missing');
  const version = req.headers['sec-websocket-version'];
  if (version !== WEBSOCKET_VERSION) {
    throw requestError(
      426,
      `Sec-WebSocket-Version must be ${WEBSOCKET_VERSION}, not ${version ?? 'missing'}`,
    );
  }
  const key = req.headers['sec-websocket-key'];
  // A repeated header arrives joined with ', ', which the pattern refuses as well.
  if (key === undefined || !KEY_PATTERN.test(key)) {
    throw requestError(400, 'Sec-WebSocket-Key must be the base64 of 16 bytes');
  }
  return key;
}

/** The server's `101 Switching Protocols` for a request whose key checkUpgradeRequest returned. */
export function upgradeResponseHead(key: string): string {
  return (
    'HTTP/1.1 101 Switching Protocols\r\n' +
    'Upgrade: websocket\r\n' +
    'Connection: Upgrade\r\n' +
    `Sec-WebSocket-Accept: ${webSocketAccept(key)}\r\n\r\n`
  );
}

/**
 * Checks the server's 101 answer to an upgrade sent with `key` (RFC 6455 §4.1, the client's
 * checks): `Upgrade: websocket`, `Connection: Upgrade`, the accept hash of our key, and no
 * extension or subprotocol, since we offered none. Throws TUN_ERR_PROTOCOL, `details.websocket`
 * saying what was wrong: whatever answered is not a WebSocket server we can talk to.
 */
export function checkUpgradeResponse(res: IncomingMessage, key: string): void {
  const fail = (what: string): never => {
    throw new TunnelError('TUN_ERR_PROTOCOL', `the WebSocket handshake failed: ${what}`, {
      details: { status: res.statusCode, websocket: what },
    });
  };
  if (res.statusCode !== 101) fail(`status ${res.statusCode}, not 101`);
  if (!hasToken(res.headers.upgrade, 'websocket')) fail('the 101 lacks Upgrade: websocket');
  if (!hasToken(res.headers.connection, 'upgrade')) fail('the 101 lacks Connection: Upgrade');
  if (res.headers['sec-websocket-accept'] !== webSocketAccept(key)) {
    fail('the 101 carries a wrong Sec-WebSocket-Accept');
  }
  if (res.headers['sec-websocket-extensions'] !== undefined)
    fail('the 101 names an extension we did not offer');
  if (res.headers['sec-websocket-protocol'] !== undefined)
    fail('the 101 names a subprotocol we did not offer');
}

/** Whether a comma-separated header value holds `token` (case-insensitive, RFC 7230 §7). */
function hasToken(value: string | string[] | undefined, token: string): boolean {
  if (value === undefined) return false;
  const joined = Array.isArray(value) ? value.join(',') : value;
  return joined.split(',').some((part) => part.trim().toLowerCase() === token);
}

function requestError(status: number, what: string): TunnelError {
  return new TunnelError('TUN_ERR_PROTOCOL', `not a valid WebSocket upgrade: ${what}`, {
    details: { status, websocket: what },
  });
}
