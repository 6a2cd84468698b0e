/**
 * The `http` route mode (dashboards): on the public TLS port, the labels whose agents registered
 * them as `http` (a URL target). TLS ends here, with the server certificate; node:http parses
 * each request and, once the route's access admits it (http-access.ts: a signed link's cookie, a
 * password, or a route open to anyone), forwards it over a route stream to the agent, which
 * dials the target (with TLS for an https target). WebSocket upgrades are forwarded as raw bytes
 * after their head, subprotocols and all. Nothing is buffered: bodies stream both ways with
 * backpressure. Hand-written on node:http (docs/ARCHITECTURE.md says why not http-proxy): one
 * request function and one keep-alive agent per user connection whose connections are tunnel
 * streams.
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { TunnelError, spliceBytes, type ErrorCode } from '@cluster-tunnel/protocol';
import type { LinkSession } from '../http-link.js';
import { HttpAccess, SESSION_COOKIE, type AccessRefusal, type Visitor } from '../http-access.js';
import { MAX_REQUEST_HEADER_BYTES, answerBadRequest } from '../bad-request.js';
import { auditHttpRequest, auditHttpUpgrade } from '../audit.js';
import { requestPath } from '../request-path.js';
import type { RouteMode, RouteModeContext } from './route-mode.js';

/** Paths the mode answers itself on every http route. */
export const LOGIN_PATH = '/.tunnel/login';
export const LOGOUT_PATH = '/.tunnel/logout';
/** Request headers that concern one hop only (RFC 9110 §7.6.1), never forwarded. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

export function createHttpMode(context: RouteModeContext): RouteMode {
  const { config, log, registry, metrics } = context;
  const access = new HttpAccess(config, log);
  const routeOf = new WeakMap<Duplex, string>();
  const agents = new WeakMap<Duplex, http.Agent>();
  const sockets = new Set<Duplex>();
  /** The link session each user connection was last admitted with: revoking it ends the connection. */
  const sessionOf = new WeakMap<Duplex, string>();
  /** The agent behind each tunnel stream an http.Agent holds, for the audit lines. */
  const agentIdOf = new WeakMap<Duplex, string>();
  /** What the audit line of a request learns on its way: who, through which agent, how much. */
  const auditOf = new WeakMap<
    http.ServerResponse,
    { user: string | null; agentId: string | null; bytesIn: number; bytesOut: number }
  >();
  let requests = 0;

  const server = http.createServer({ maxHeaderSize: MAX_REQUEST_HEADER_BYTES }, (req, res) => {
    // Every request gets its audit line, refused ones too, once its answer is done.
    const startedAt = Date.now();
    const facts = { user: null, agentId: null, bytesIn: 0, bytesOut: 0 };
    auditOf.set(res, facts);
    res.once('close', () => {
      const tunnelCode = res.getHeader('x-tunnel-error');
      const route = routeOf.get(req.socket) ?? '';
      metrics.httpRequests.inc({ status_class: `${Math.floor(res.statusCode / 100)}xx` });
      metrics.httpRequestSeconds.observe((Date.now() - startedAt) / 1000);
      metrics.userBytes('http', route, facts.bytesIn, facts.bytesOut);
      if (typeof tunnelCode === 'string' && res.statusCode >= 500) {
        metrics.refusals.inc({ mode: 'http', code: tunnelCode });
      }
      auditHttpRequest(log, {
        mode: 'http',
        route,
        agentId: facts.agentId,
        serverId: config.serverId,
        remoteAddress: address(req),
        bytesIn: facts.bytesIn,
        bytesOut: facts.bytesOut,
        durationMs: Date.now() - startedAt,
        code: typeof tunnelCode === 'string' ? tunnelCode : res.writableFinished ? null : 'ECONNRESET',
        method: req.method ?? '',
        path: requestPath(req) ?? '',
        status: res.statusCode,
        user: facts.user,
      });
    });
    handle(req, res).catch((err: unknown) => {
      log.error({ err }, 'http route request failed');
      if (!res.headersSent) page(res, 502, 'TUN_ERR_PROTOCOL', 'The request could not be forwarded.');
      else res.destroy();
    });
  });
  // No fixed request timeout (long downloads, event streams): an idle timeout instead.
  server.requestTimeout = 0;
  server.headersTimeout = config.handshakeTimeoutMs;
  server.keepAliveTimeout = config.httpIdleTimeoutMs;
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    upgrade(req, socket, head).catch((err: unknown) => {
      log.error({ err }, 'http route upgrade failed');
      socket.destroy();
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    answerBadRequest(err, socket);
  });

  const hostnameOf = (route: string): string => `${route}.${config.domain}`;

  /**
   * The keep-alive agent of one user connection: its requests reuse a tunnel stream (no target
   * dial per request), and no stream is ever shared between two users, so every stream header
   * carries the address of the one user it serves. Ends with the user's connection.
   */
  const agentOf = (user: Duplex, route: string): http.Agent => {
    let agent = agents.get(user);
    if (!agent) {
      const remoteAddress = socketAddress(user);
      agent = new http.Agent({ keepAlive: true, maxFreeSockets: 4, timeout: config.httpIdleTimeoutMs });
      agent.createConnection = ((_options: unknown, done: (err: Error | null, s?: Duplex) => void) => {
        context.openRouteStream({ mode: 'http', route, remoteAddress, registeredAs: 'http' }).then(
          ({ stream, agent }) => {
            agentIdOf.set(stream, agent.identity.agentId);
            done(null, socketLike(stream));
          },
          (err: unknown) => done(err as Error),
        );
        return undefined;
      }) as unknown as http.Agent['createConnection'];
      agents.set(user, agent);
      const created = agent;
      user.once('close', () => created.destroy());
    }
    return agent;
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const route = routeOf.get(req.socket)!;
    const path = requestPath(req);
    if (path === undefined) return page(res, 400, 'TUN_ERR_PROTOCOL', 'Malformed request target.');
    if (!hostMatches(req.headers.host, hostnameOf(route))) {
      return page(res, 421, 'TUN_ERR_UNKNOWN_HOST', 'This connection serves another hostname.');
    }
    if (path === LOGIN_PATH) return login(req, res, route);
    if (path === LOGOUT_PATH) {
      res.setHeader('Set-Cookie', `${SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0`);
      return page(res, 200, undefined, 'Signed out of this route.');
    }
    let who: Visitor;
    try {
      who = await access.admit(req, route, hostnameOf(route));
    } catch (err) {
      const e = err as AccessRefusal;
      log.info({ route, remoteAddress: address(req), code: e.code, err: e.message }, 'http request refused');
      if (e.code === 'TUN_ERR_LIMIT_EXCEEDED') {
        res.setHeader('Retry-After', '1');
        return page(res, 429, e.code, 'Too many sign-ins at once; try again in a moment.');
      }
      if (e.challenge !== undefined) res.setHeader('WWW-Authenticate', e.challenge);
      return page(res, 401, 'TUN_ERR_ACCESS_DENIED', `Access denied: ${e.message}.`);
    }
    if (who.session !== undefined) sessionOf.set(req.socket, who.session);
    auditOf.get(res)!.user = who.user ?? null;
    forward(req, res, route, who);
  }

  async function login(req: http.IncomingMessage, res: http.ServerResponse, route: string): Promise<void> {
    const token = new URL(req.url ?? '/', 'https://x').searchParams.get('token') ?? '';
    let granted: LinkSession;
    try {
      granted = await access.openLink(token, route, hostnameOf(route));
    } catch (err) {
      const e = err as TunnelError;
      log.info({ route, remoteAddress: address(req), code: e.code, err: e.message }, 'http link refused');
      return page(res, 401, 'TUN_ERR_ACCESS_DENIED', `This link cannot be used: ${e.message}.`);
    }
    const maxAgeS = Math.max(0, Math.floor((granted.sessionExpiresAt.getTime() - Date.now()) / 1000));
    log.info({ route, user: granted.user, remoteAddress: address(req) }, 'http session started');
    res.writeHead(303, {
      'Set-Cookie': `${SESSION_COOKIE}=${token}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=${maxAgeS}`,
      Location: '/',
      'Cache-Control': 'no-store',
    });
    res.end();
  }

  function forward(req: http.IncomingMessage, res: http.ServerResponse, route: string, who: Visitor): void {
    requests++;
    const facts = auditOf.get(res)!;
    req.on('data', (chunk: Buffer) => {
      facts.bytesIn += chunk.length;
    });
    const upstream = http.request({
      agent: agentOf(req.socket, route),
      method: req.method,
      path: req.url,
      headers: forwardedHeaders(req, registry.hostHeaderOf(route), who),
      setHost: false,
    });
    upstream.on('socket', (stream: Duplex) => {
      facts.agentId = agentIdOf.get(stream) ?? null;
    });
    // The target must start its answer in time; streaming after that has no limit but idleness.
    const timer = setTimeout(
      () => upstream.destroy(new TunnelError('TUN_ERR_TIMEOUT', 'no response headers')),
      config.httpResponseTimeoutMs,
    );
    upstream.on('response', (answer) => {
      clearTimeout(timer);
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, stripHopByHop(answer.rawHeaders));
      res.flushHeaders();
      answer.on('data', (chunk: Buffer) => {
        facts.bytesOut += chunk.length;
      });
      answer.pipe(res);
      answer.on('error', () => res.destroy());
    });
    upstream.on('error', (err: Error) => {
      clearTimeout(timer);
      const code: ErrorCode = err instanceof TunnelError ? err.code : 'TUN_ERR_DIAL_FAILED';
      log.info({ route, code, err: err.message }, 'http request failed');
      if (res.headersSent) return void res.destroy();
      if (code === 'TUN_ERR_TIMEOUT') page(res, 504, code, 'The dashboard did not answer in time.');
      else if (code === 'TUN_ERR_NO_ROUTE') page(res, 502, code, 'No agent of this cluster is connected.');
      else page(res, 502, code, 'The agent could not reach the dashboard.');
    });
    res.on('close', () => {
      clearTimeout(timer);
      if (!upstream.destroyed && !upstream.writableFinished) upstream.destroy();
      metrics.connections.inc({ mode: 'http', outcome: res.statusCode < 500 ? 'forwarded' : 'failed' });
    });
    req.pipe(upstream);
  }

  async function upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const route = routeOf.get(socket)!;
    const startedAt = Date.now();
    const audit = (
      outcome: 'closed' | 'reset' | 'refused',
      o: { code: string | null; user?: string | null; agentId?: string; bytesIn?: number; bytesOut?: number },
    ): void =>
      auditHttpUpgrade(log, {
        mode: 'http',
        route,
        agentId: o.agentId ?? null,
        serverId: config.serverId,
        remoteAddress: address(req),
        bytesIn: o.bytesIn ?? 0,
        bytesOut: o.bytesOut ?? 0,
        durationMs: Date.now() - startedAt,
        code: o.code,
        path: requestPath(req) ?? '',
        protocol: String(req.headers.upgrade ?? ''),
        user: o.user ?? null,
        outcome,
      });
    socket.on('error', () => undefined);
    if (!hostMatches(req.headers.host, hostnameOf(route))) {
      socket.end(rawAnswer(421, 'TUN_ERR_UNKNOWN_HOST'));
      audit('refused', { code: 'TUN_ERR_UNKNOWN_HOST' });
      return;
    }
    let who: Visitor;
    try {
      who = await access.admit(req, route, hostnameOf(route));
    } catch (err) {
      const e = err as AccessRefusal;
      log.info({ route, remoteAddress: address(req), code: e.code }, 'http upgrade refused');
      const limited = e.code === 'TUN_ERR_LIMIT_EXCEEDED';
      const extra = limited ? ['Retry-After: 1'] : e.challenge ? [`WWW-Authenticate: ${e.challenge}`] : [];
      socket.end(rawAnswer(limited ? 429 : 401, e.code, extra));
      audit('refused', { code: e.code });
      return;
    }
    if (who.session !== undefined) sessionOf.set(socket, who.session);
    let routed;
    try {
      routed = await context.openRouteStream({
        mode: 'http',
        route,
        remoteAddress: address(req),
        registeredAs: 'http',
      });
    } catch (err) {
      const code = err instanceof TunnelError ? err.code : 'TUN_ERR_DIAL_FAILED';
      socket.end(rawAnswer(502, code));
      audit('refused', { code, user: who.user ?? null });
      return;
    }
    const stream = routed.stream;
    let bytesIn = 0;
    let bytesOut = 0;
    socket.once('close', () => {
      const clean = stream.readableEnded && stream.writableFinished;
      const code = clean ? null : (stream.resetReason?.code ?? 'ECONNRESET');
      audit(clean ? 'closed' : 'reset', {
        code,
        user: who.user ?? null,
        agentId: routed.agent.identity.agentId,
        bytesIn,
        bytesOut,
      });
    });
    // The request head as the target must see it (Upgrade and Connection kept), then raw bytes.
    const headers = forwardedHeaders(req, registry.hostHeaderOf(route), who);
    headers.connection = req.headers.connection ?? 'Upgrade';
    headers.upgrade = req.headers.upgrade ?? 'websocket';
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (const [name, value] of Object.entries(headers)) {
      for (const v of Array.isArray(value) ? value : [value])
        if (v !== undefined) lines.push(`${name}: ${v}`);
    }
    routed.stream.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (head.length > 0) routed.stream.write(head);
    bytesIn += head.length;
    socket.on('data', (chunk: Buffer) => {
      bytesIn += chunk.length;
    });
    spliceBytes(socket as Socket, routed.stream, (chunk) => {
      bytesOut += chunk.length;
    });
    socket.on('close', () => routed.stream.destroy());
    routed.stream.on('close', () => socket.destroy());
    routed.stream.resume();
    (socket as Socket).resume();
  }

  return {
    name: 'http',
    async start() {
      await access.start(context.tokenPublicKeyPems());
    },
    claims: (route) => registry.modeOf(route) === 'http',
    accept(socket, route, helloBytes) {
      socket.unshift(helloBytes);
      const secure = new tls.TLSSocket(socket, {
        isServer: true,
        secureContext: context.serverSecureContext(),
        ALPNProtocols: ['http/1.1'],
      });
      secure.on('error', () => socket.destroy());
      // Idle, not total: a console open for hours lives as long as bytes move.
      secure.setTimeout(config.httpIdleTimeoutMs, () => secure.destroy());
      routeOf.set(secure, route);
      sockets.add(secure);
      secure.once('close', () => sockets.delete(secure));
      server.emit('connection', secure);
    },
    onRevocations(revoked) {
      access.setRevoked(revoked);
      for (const s of sockets) {
        const session = sessionOf.get(s);
        if (session === undefined || !revoked.has(session)) continue;
        log.info({ route: routeOf.get(s), session }, 'http connection closed: session revoked');
        s.destroy();
      }
    },
    status: () => ({ connections: sockets.size, requests, access: access.status() }),
    // Requests on open connections still need their access checked while the server drains.
    close: () => undefined,
    destroy() {
      void access.close();
      // Each user connection's agent ends with it.
      for (const s of sockets) s.destroy();
    },
  };
}

/** A tunnel stream dressed as the socket node:http expects of an agent's connection. */
function socketLike(stream: Duplex): Duplex {
  const s = stream as Duplex & Record<string, unknown>;
  const self = (): Duplex => stream;
  s.setKeepAlive = self;
  s.setNoDelay = self;
  s.setTimeout = self;
  s.ref = self;
  s.unref = self;
  // openRouteStream leaves it paused: the HTTP parser reads it from here.
  stream.resume();
  return stream;
}

/**
 * The request's headers for the target: hop-by-hop ones and the tunnel's own credentials (the
 * session cookie; the password on a basic route) removed, X-Forwarded-* added, Host kept unless
 * the route sets one.
 */
function forwardedHeaders(
  req: http.IncomingMessage,
  hostHeader: string | undefined,
  who: Visitor,
): http.OutgoingHttpHeaders {
  const headers: http.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (HOP_BY_HOP.has(name) || value === undefined) continue;
    headers[name] = value;
  }
  // The session is for this server: the dashboard never sees it.
  const cookies = withoutCookie(req.headers.cookie, SESSION_COOKIE);
  if (cookies === undefined) delete headers.cookie;
  else headers.cookie = cookies;
  if (who.access === 'basic') delete headers.authorization;
  const client = req.socket.remoteAddress ?? '';
  const prior = req.headers['x-forwarded-for'];
  headers['x-forwarded-for'] = prior ? `${String(prior)}, ${client}` : client;
  headers['x-forwarded-proto'] = 'https';
  if (req.headers.host) headers['x-forwarded-host'] = req.headers.host;
  if (hostHeader !== undefined) headers.host = hostHeader;
  return headers;
}

function stripHopByHop(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    // Transfer-Encoding among them: node:http frames the body itself.
    if (HOP_BY_HOP.has(name)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

function withoutCookie(header: string | undefined, name: string): string | undefined {
  const kept = (header ?? '')
    .split(';')
    .map((p) => p.trim())
    .filter((p) => p !== '' && !p.startsWith(`${name}=`));
  return kept.length > 0 ? kept.join('; ') : undefined;
}

/** Host may carry the public port; the name must be the route's. */
function hostMatches(host: string | undefined, hostname: string): boolean {
  if (host === undefined) return false;
  return host.toLowerCase().replace(/:\d+$/, '') === hostname;
}

function address(req: http.IncomingMessage): string {
  return socketAddress(req.socket);
}

function socketAddress(socket: Duplex): string {
  const s = socket as Socket;
  return `${s.remoteAddress}:${s.remotePort}`;
}

/** A bodiless answer on a socket that node:http handed over (upgrades). */
function rawAnswer(status: number, code: ErrorCode, extra: readonly string[] = []): string {
  const head = [`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}`, `X-Tunnel-Error: ${code}`, ...extra];
  return `${head.join('\r\n')}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`;
}

/** A page a person understands, with the code, never a hung tab. */
function page(res: http.ServerResponse, status: number, code: ErrorCode | undefined, text: string): void {
  const body =
    `<!doctype html><meta charset="utf-8"><title>${status} ${http.STATUS_CODES[status] ?? ''}</title>` +
    `<h1>${status} ${http.STATUS_CODES[status] ?? ''}</h1><p>${escapeHtml(text)}</p>` +
    (code ? `<p><code>${code}</code></p>` : '');
  // Set, not passed to writeHead: the audit line reads X-Tunnel-Error back with getHeader.
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  if (code) res.setHeader('X-Tunnel-Error', code);
  res.writeHead(status);
  res.end(body);
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
