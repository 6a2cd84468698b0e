/**
 * A scripted tunnel server, as raw as hostile.ts's agents: TLS on 127.0.0.1 port 0, our
 * WebSocket handshake and a server-role yamux session, `register` answered with whatever the
 * test says, and streams opened with the bytes the test gives. Not a mock: every byte crosses
 * TLS, WebSocket and yamux to the real agent.
 *
 * Agent tests use the real TunnelServer (in-process.ts). This stands in only for what the real
 * server never does: servers of other releases (a `registered` without capabilities or
 * serverCount, a v1 header), a server that changes what it announces (serverCount), that refuses
 * a registration, that asks for a route the agent does not serve, a hostile server, and pages a
 * middlebox answers an upgrade with (a proxy's HTML 403, a balancer's 503).
 */
import { writeFileSync } from 'node:fs';
import { STATUS_CODES, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import {
  ControlChannel,
  YamuxSession,
  checkUpgradeRequest,
  createWebSocketDuplex,
  encodeStreamHeader,
  readStreamReply,
  upgradeResponseHead,
  type ControlMessage,
  type RegisterMessage,
  type StreamReply,
  type YamuxStream,
} from '@cluster-tunnel/protocol';
import { defer } from './cleanup.js';
import { withDeadline } from './streams.js';
import { tempDir } from './temp-dir.js';
import { tlsCredentials } from './transports.js';

/** The user address scripted streams carry in their header. */
export const RAW_USER_ADDRESS = '203.0.113.9:40000';

/** One agent session on a RawServer, after its `register` was answered. */
export interface RawServerSession {
  /** The upgraded socket: destroy it to drop the connection without a close frame. */
  socket: Duplex;
  session: YamuxSession;
  control: ControlChannel;
  /** What the agent sent. */
  register: RegisterMessage;
  /** Set once the agent sent GoAway (it is leaving this session). */
  goAwayReceived: boolean;
  /** Resolves when the session has closed. */
  closed: Promise<void>;
  /** Opens a stream, writes `bytes` (a header, maybe user bytes behind it), returns the agent's reply. */
  openStream(bytes: Buffer): Promise<{ stream: YamuxStream; reply: StreamReply }>;
  /** openStream with a v1 `route` header for `route` and `firstBytes` behind it. */
  openRoute(route: string, firstBytes?: Buffer): Promise<{ stream: YamuxStream; reply: StreamReply }>;
}

/** One upgrade request the server saw. */
export interface UpgradeRecord {
  /** performance.now() when it arrived. */
  at: number;
  token: string | undefined;
  /** What it was answered: 101, or the refusal's status. */
  status: number;
}

export interface RawServerOptions {
  /** Answers each `register`; default: `registered` as `raw-1` for the agent's routes. */
  answer?: (register: RegisterMessage) => ControlMessage;
  /** An HTTP refusal for an upgrade (status and raw body), or undefined to accept it. */
  refuse?: (req: IncomingMessage) => { status: number; body: string } | undefined;
}

/** `registered` for the agent's routes, as a server with this id (and count, if given) says it. */
export function registeredAs(serverId: string, serverCount?: () => number | undefined) {
  return (m: RegisterMessage): ControlMessage => {
    const count = serverCount?.();
    return {
      type: 'registered',
      serverId,
      hostnames: m.routes.map((r) => `${r}.proxy.localhost`),
      ...(count === undefined ? {} : { serverCount: count }),
    };
  };
}

/** A refusal body as our server writes it: JSON with a code. */
export function codedRefusal(status: number, code: string, message: string) {
  return { status, body: JSON.stringify({ code, message }) };
}

export class RawServer {
  readonly url: string;
  readonly caFile: string;
  readonly upgrades: UpgradeRecord[] = [];
  /** Every session whose `register` was answered with `registered`, in order. */
  readonly sessions: RawServerSession[] = [];
  private readonly sockets = new Set<Socket>();
  private untaken: RawServerSession[] = [];
  private waiters: Array<(s: RawServerSession) => void> = [];
  private readonly answer: (register: RegisterMessage) => ControlMessage;

  private constructor(
    private readonly server: https.Server,
    dir: string,
    private readonly options: RawServerOptions,
  ) {
    this.url = `wss://127.0.0.1:${(server.address() as AddressInfo).port}/connect`;
    this.caFile = join(dir, 'ca.pem');
    this.answer = options.answer ?? registeredAs('raw-1');
    server.on('secureConnection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.onUpgrade(req, socket, head),
    );
  }

  /**
   * Starts a server; closed when the test ends. An answer function alone is the `answer` option.
   * Its certificate is for localhost and 127.0.0.1.
   */
  static async start(
    options: RawServerOptions | ((register: RegisterMessage) => ControlMessage) = {},
  ): Promise<RawServer> {
    const { key, cert } = await tlsCredentials();
    const dir = tempDir('raw-server-');
    writeFileSync(join(dir, 'ca.pem'), cert);
    const server = https.createServer({ key, cert });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const raw = new RawServer(server, dir, typeof options === 'function' ? { answer: options } : options);
    defer(() => raw.close());
    return raw;
  }

  /** The next session whose `register` was answered (taken in order). */
  nextSession(timeoutMs = 5_000): Promise<RawServerSession> {
    const ready = this.untaken.shift();
    if (ready) return Promise.resolve(ready);
    let waiter: (s: RawServerSession) => void = () => undefined;
    const next = new Promise<RawServerSession>((resolve) => {
      waiter = resolve;
      this.waiters.push(waiter);
    });
    return withDeadline(next, timeoutMs, 'an agent to register').finally(() => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
    });
  }

  /** Sessions the agent has neither left nor lost. */
  live(): RawServerSession[] {
    return this.sessions.filter((s) => !s.goAwayReceived && !s.session.isClosed);
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.session.destroy();
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => undefined);
    const header = req.headers.authorization;
    const token = header?.startsWith('Bearer ') ? header.slice('Bearer '.length) : undefined;
    const refusal = this.options.refuse?.(req);
    this.upgrades.push({ at: performance.now(), token, status: refusal?.status ?? 101 });
    if (refusal) {
      const body = Buffer.from(refusal.body);
      socket.end(
        `HTTP/1.1 ${refusal.status} ${STATUS_CODES[refusal.status] ?? ''}\r\n` +
          `content-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${refusal.body}`,
      );
      return;
    }
    socket.write(upgradeResponseHead(checkUpgradeRequest(req)));
    void this.onAgent(socket, head);
  }

  private async onAgent(socket: Duplex, head: Buffer): Promise<void> {
    const session = new YamuxSession(createWebSocketDuplex(socket, { role: 'server', head }), {
      role: 'server',
      keepaliveIntervalMs: 0,
    });
    session.on('error', () => undefined);
    const stream = await new Promise<YamuxStream>((resolve) => session.once('stream', resolve));
    const control = new ControlChannel(stream);
    // Answer the agent's FIN on the control stream, as the server does, so a drain can finish.
    stream.on('end', () => stream.end());
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
    const openStream = async (bytes: Buffer) => {
      const user = session.open();
      user.on('error', () => undefined); // RST after a refusal is expected
      user.write(bytes);
      return { stream: user, reply: await readStreamReply(user, 5_000) };
    };
    const raw: RawServerSession = {
      socket,
      session,
      control,
      register: message,
      goAwayReceived: false,
      closed: new Promise((resolve) => session.once('close', () => resolve())),
      openStream,
      openRoute: (route, firstBytes = Buffer.alloc(0)) =>
        openStream(
          Buffer.concat([
            encodeStreamHeader({ type: 'route', route, remoteAddress: RAW_USER_ADDRESS }, 1),
            firstBytes,
          ]),
        ),
    };
    session.on('goaway', () => {
      raw.goAwayReceived = true;
    });
    this.sessions.push(raw);
    const waiter = this.waiters.shift();
    if (waiter) waiter(raw);
    else this.untaken.push(raw);
  }
}
