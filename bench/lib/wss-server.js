#!/usr/bin/env node
/**
 * The S5b reference: a bare WebSocket-over-TLS server (node:https + ws, no compression, as the
 * tunnel's agent endpoint uses them) that accepts connections and holds them, doing nothing. N idle
 * connections to it show what WebSocket+TLS alone costs a Node process per connection.
 * Usage: node bench/lib/wss-server.js --cert F --key F   (prints "listening <port>")
 */
import fs from 'node:fs';
import https from 'node:https';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const { values } = parseArgs({ options: { cert: { type: 'string' }, key: { type: 'string' } } });
const server = https.createServer({ cert: fs.readFileSync(values.cert), key: fs.readFileSync(values.key) });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => undefined);
  wss.handleUpgrade(req, socket, head, (ws) => ws.on('error', () => undefined));
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${server.address().port}\n`));
process.on('SIGTERM', () => process.exit(0));
