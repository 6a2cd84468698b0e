/**
 * A tunnel server as raw as hostile.ts's agents, standing for servers of other releases: TLS on
 * 127.0.0.1 port 0, any bearer token accepted, our WebSocket handshake and a server-role yamux
 * session, `register` answered with whatever the test says, and streams opened with the bytes
 * the test gives (an older server's v1 header written byte by byte, a newer server's type). Not
 * a mock: every byte crosses TLS, WebSocket and yamux to the real agent.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import {
  ControlChannel,
  YamuxSession,
  checkUpgradeRequest,
  createWebSocketDuplex,
  readStreamReply,
  upgradeResponseHead,
  type ControlMessage,
  type RegisterMessage,
  type StreamReply,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { onTestFinished } from 'vitest';
import { tlsCredentials } from './transports.js';

/** One agent session on a RawServer, after its `register` was answered. */
export interface RawServerSession {
  session: YamuxSession;
  control: ControlChannel;
  /** What the agent sent. */
  register: RegisterMessage;
  /** Opens a stream, writes `bytes` (a header, maybe user bytes behind it), returns the agent's reply. */
  openStream(bytes: Buffer): Promise<{ stream: YamuxStream; reply: StreamReply }>;
}

export class RawServer {
  readonly url: string;
  readonly caFile: string;
  private readonly sockets = new Set<Socket>();
  private readonly sessions: RawServerSession[] = [];
  private waiters: Array<(s: RawServerSession) => void> = [];

  private constructor(
    private readonly server: https.Server,
    private readonly dir: string,
    private readonly answer: (register: RegisterMessage) => ControlMessage,
  ) {
    this.url = `wss://127.0.0.1:${(server.address() as AddressInfo).port}/connect`;
    this.caFile = join(dir, 'ca.pem');
    server.on('secureConnection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on('error', () => undefined);
      socket.write(upgradeResponseHead(checkUpgradeRequest(req)));
      void this.onAgent(socket, head);
    });
  }

  /** Starts a server that answers each `register` with `answer(register)`; closed when the test ends. */
  static async start(answer: (register: RegisterMessage) => ControlMessage): Promise<RawServer> {
    const { key, cert } = await tlsCredentials();
    const dir = mkdtempSync(join(tmpdir(), 'raw-server-'));
    writeFileSync(join(dir, 'ca.pem'), cert);
    const server = https.createServer({ key, cert });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const raw = new RawServer(server, dir, answer);
    onTestFinished(() => raw.close());
    return raw;
  }

  /** The next session whose `register` was answered (taken in order). */
  nextSession(timeoutMs = 5_000): Promise<RawServerSession> {
    const ready = this.sessions.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const waiter = (s: RawServerSession): void => {
        clearTimeout(timer);
        resolve(s);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no agent registered within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async onAgent(socket: Duplex, head: Buffer): Promise<void> {
    const session = new YamuxSession(createWebSocketDuplex(socket, { role: 'server', head }), {
      role: 'server',
      keepaliveIntervalMs: 0,
    });
    session.on('error', () => undefined);
    const stream = await new Promise<YamuxStream>((resolve) => session.once('stream', resolve));
    const control = new ControlChannel(stream);
    const message = await control.next(5_000).catch(() => undefined);
    if (message?.type !== 'register') {
      session.destroy();
      return;
    }
    const reply = this.answer(message);
    control.send(reply);
    if (reply.type !== 'registered') {
      // As a server does after a refusal: GoAway, then the connection closes.
      session.close().catch(() => undefined);
      return;
    }
    const raw: RawServerSession = {
      session,
      control,
      register: message,
      async openStream(bytes) {
        const user = session.open();
        user.on('error', () => undefined); // RST after a refusal is expected
        user.write(bytes);
        return { stream: user, reply: await readStreamReply(user, 5_000) };
      },
    };
    const waiter = this.waiters.shift();
    if (waiter) waiter(raw);
    else this.sessions.push(raw);
  }
}
