/**
 * A real, minimal tunnel-server peer for agent tests (one replica; put several behind
 * test/helpers/load-balancer.ts for the agent's one-session-per-replica logic): HTTPS on 127.0.0.1 port 0, the agent
 * endpoint `/connect` (bearer token checked on the upgrade, 401/403 with a JSON body otherwise),
 * a server-role yamux session per agent, `registered` on the control stream, and user streams
 * opened with a stream header exactly as the server does. Not a mock: every byte crosses TLS,
 * WebSocket (our handshake and frame codec, as the server uses them) and yamux.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { STATUS_CODES, type IncomingMessage } from 'node:http';
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
  upgradeResponseHead,
  encodeStreamHeader,
  readStreamReply,
} from '@cluster-tunnel/protocol';
import type { ControlMessage, RegisterMessage, StreamReply, YamuxStream } from '@cluster-tunnel/protocol';
import { tlsCredentials } from '../helpers/transports.js';

export const DOMAIN = 'proxy.localhost';
export const USER_ADDRESS = '203.0.113.9:40000';

/** What the peer answers an upgrade: accept it, or refuse with a status and raw body. */
export type Verdict = 'accept' | { status: number; body: string };

export interface UpgradeRecord {
  /** performance.now() when the upgrade request arrived. */
  at: number;
  token: string | undefined;
  status: number;
}

export interface PeerOptions {
  serverId?: string;
  /** Sent in the default `registered` answer; default: left out, as an older server does. */
  serverCount?: number;
  /** Decides each upgrade; default: accept the bearer token `token`. */
  verdict?: (token: string | undefined, req: IncomingMessage) => Verdict;
  /** The answer to `register`; default: registered with `<label>.<domain>` hostnames. */
  onRegister?: (message: RegisterMessage) => ControlMessage;
}

export class PeerSession {
  readonly sessionClosed: Promise<void>;
  goAwayReceived = false;

  constructor(
    /** The upgraded socket: destroy it to drop the connection without a close frame. */
    readonly socket: Duplex,
    readonly session: YamuxSession,
    readonly control: ControlChannel,
    readonly register: RegisterMessage,
  ) {
    this.sessionClosed = new Promise((resolve) => session.once('close', () => resolve()));
    session.on('goaway', () => {
      this.goAwayReceived = true;
    });
  }

  /** Opens a user stream with its header (and `firstBytes` right behind it), returns the agent's reply. */
  async openUserStream(
    route: string,
    firstBytes: Buffer = Buffer.alloc(0),
  ): Promise<{ stream: YamuxStream; reply: StreamReply }> {
    const stream = this.session.open();
    stream.on('error', () => undefined); // RST after a refusal is expected
    stream.write(
      Buffer.concat([
        encodeStreamHeader({ type: 'route', route, remoteAddress: USER_ADDRESS }, 1),
        firstBytes,
      ]),
    );
    const reply = await readStreamReply(stream, 5_000);
    return { stream, reply };
  }
}

export class TunnelPeer {
  readonly serverId: string;
  readonly url: string;
  readonly caFile: string;
  readonly upgrades: UpgradeRecord[] = [];
  readonly sessions: PeerSession[] = [];
  /** What the default `registered` says; change it to tell agents of a new replica count. */
  serverCount: number | undefined;
  verdict: (token: string | undefined, req: IncomingMessage) => Verdict;
  onRegister: (message: RegisterMessage) => ControlMessage;
  private readonly server: https.Server;
  private readonly sockets = new Set<Socket>();
  private readonly dir: string;
  private waiters: Array<(s: PeerSession) => void> = [];
  /** Registered sessions no nextSession() call has taken yet. */
  private untaken: PeerSession[] = [];

  private constructor(
    server: https.Server,
    dir: string,
    caFile: string,
    token: string,
    options: PeerOptions,
  ) {
    this.server = server;
    this.dir = dir;
    this.caFile = caFile;
    this.serverId = options.serverId ?? 'peer-1';
    this.serverCount = options.serverCount;
    this.url = `wss://127.0.0.1:${(server.address() as AddressInfo).port}/connect`;
    this.verdict =
      options.verdict ??
      ((t) => (t === token ? 'accept' : jsonRefusal(401, 'TUN_ERR_TOKEN_INVALID', 'bad token')));
    this.onRegister =
      options.onRegister ??
      ((m) => ({
        type: 'registered',
        serverId: this.serverId,
        hostnames: m.routes.map((r) => `${r}.${DOMAIN}`),
        ...(this.serverCount === undefined ? {} : { serverCount: this.serverCount }),
      }));
    server.on('secureConnection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.onUpgrade(req, socket, head),
    );
  }

  /** Starts a peer accepting bearer token `token`. Close it with close(). */
  static async start(token: string, options: PeerOptions = {}): Promise<TunnelPeer> {
    const { key, cert } = await tlsCredentials();
    const dir = mkdtempSync(join(tmpdir(), 'tunnel-peer-'));
    const caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, cert);
    const server = https.createServer({ key, cert });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return new TunnelPeer(server, dir, caFile, token, options);
  }

  /** The next agent session that registers (or one already registered and not yet taken). */
  nextSession(timeoutMs = 5_000): Promise<PeerSession> {
    const ready = this.untaken.shift();
    if (ready) return Promise.resolve(ready);
    return new Promise((resolve, reject) => {
      const waiter = (s: PeerSession): void => {
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
    for (const s of this.sessions) s.session.destroy();
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const header = req.headers.authorization;
    const token = header?.startsWith('Bearer ') ? header.slice('Bearer '.length) : undefined;
    const verdict = req.url === '/connect' ? this.verdict(token, req) : { status: 404, body: '' };
    this.upgrades.push({ at: performance.now(), token, status: verdict === 'accept' ? 101 : verdict.status });
    if (verdict !== 'accept') {
      const body = Buffer.from(verdict.body);
      socket.end(
        `HTTP/1.1 ${verdict.status} ${STATUS_CODES[verdict.status] ?? ''}\r\n` +
          `content-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${verdict.body}`,
      );
      return;
    }
    socket.on('error', () => undefined);
    socket.write(upgradeResponseHead(checkUpgradeRequest(req)));
    void this.onAgent(socket, head);
  }

  private async onAgent(socket: Duplex, head: Buffer): Promise<void> {
    const session = new YamuxSession(createWebSocketDuplex(socket, { role: 'server', head }), {
      role: 'server',
      keepaliveIntervalMs: 0,
    });
    const stream = await new Promise<YamuxStream>((resolve) => session.once('stream', resolve));
    const control = new ControlChannel(stream);
    // Answer the agent's FIN on the control stream, as the server does, so a drain can finish.
    stream.on('end', () => stream.end());
    let message: ControlMessage;
    try {
      message = await control.next(5_000);
    } catch {
      session.destroy();
      return;
    }
    if (message.type !== 'register') {
      session.destroy();
      return;
    }
    const reply = this.onRegister(message);
    control.send(reply);
    if (reply.type !== 'registered') return;
    const peerSession = new PeerSession(socket, session, control, message);
    this.sessions.push(peerSession);
    const waiter = this.waiters.shift();
    if (waiter) waiter(peerSession);
    else this.untaken.push(peerSession);
  }
}

export function jsonRefusal(status: number, code: string, message: string): Verdict {
  return { status, body: JSON.stringify({ code, message }) };
}
