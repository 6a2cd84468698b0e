#!/usr/bin/env node
/**
 * A plain Node TCP relay (what one extra Node hop costs): every connection to 127.0.0.1:<port>
 * is piped (socket.pipe, both ways, half-close kept) to --target. With --delay-ms D it instead
 * holds every chunk for D ms in each direction, in order, releasing all due chunks on one timer:
 * a 2·D round trip between the two sides that does not itself limit throughput.
 * Usage: node bench/lib/relay.js --target <port> [--delay-ms D]   (prints "listening <port>")
 */
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { target: { type: 'string' }, 'delay-ms': { type: 'string', default: '0' } },
});
const TARGET_PORT = Number(values.target);
const DELAY_MS = Number(values['delay-ms']);
/** A delayed direction holding more than this pauses its source (a safety bound, not a window). */
const MAX_DELAYED_BYTES = 256 * 1024 * 1024;

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
  const upstream = net.connect({ host: '127.0.0.1', port: TARGET_PORT, allowHalfOpen: true, noDelay: true });
  const destroyBoth = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', destroyBoth);
  upstream.on('error', destroyBoth);
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
  if (DELAY_MS > 0) {
    delayed(client, upstream);
    delayed(upstream, client);
  } else {
    client.pipe(upstream);
    upstream.pipe(client);
  }
});

/** Copies src → dst, every chunk (and the end) DELAY_MS late, order kept. */
function delayed(src, dst) {
  const queue = [];
  let head = 0;
  let heldBytes = 0;
  let timer;
  const flush = () => {
    timer = undefined;
    const now = performance.now();
    dst.cork();
    while (head < queue.length && queue[head].due <= now) {
      const item = queue[head];
      queue[head++] = undefined;
      if (item.chunk === null) dst.end();
      else {
        heldBytes -= item.chunk.length;
        dst.write(item.chunk);
      }
    }
    dst.uncork();
    if (head > 1024 && head * 2 > queue.length) {
      queue.splice(0, head);
      head = 0;
    }
    if (heldBytes < MAX_DELAYED_BYTES / 2 && src.isPaused()) src.resume();
    schedule();
  };
  const schedule = () => {
    if (timer !== undefined || head >= queue.length) return;
    timer = setTimeout(flush, Math.max(0, queue[head].due - performance.now()));
  };
  src.on('data', (chunk) => {
    queue.push({ due: performance.now() + DELAY_MS, chunk });
    heldBytes += chunk.length;
    if (heldBytes > MAX_DELAYED_BYTES) src.pause();
    schedule();
  });
  src.on('end', () => {
    queue.push({ due: performance.now() + DELAY_MS, chunk: null });
    schedule();
  });
}

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.on('SIGTERM', () => process.exit(0));
