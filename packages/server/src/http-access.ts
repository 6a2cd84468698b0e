/**
 * Who may use an http route (docs/CONFIG.md, "Access"). The server decrypts this traffic, so
 * every request and every upgrade is checked here before anything reaches an agent:
 * - `link` (the default): a session cookie set by opening a signed link (http-link.ts);
 * - `basic`: a user and password from an htpasswd file (htpasswd.ts);
 * - `none`: anyone, only for routes the operator names, warned at start.
 * `httpAccess` chooses for every route, `httpRouteAccess` overrides it per route label.
 */
import type http from 'node:http';
import type { Logger } from 'pino';
import { TunnelError } from '@cluster-tunnel/protocol';
import type { RouteAccessKind } from '@cluster-tunnel/config';
import type { ServerConfig } from './config.js';
import { LinkVerifier, type LinkSession } from './http-link.js';
import { Htpasswd, basicCredentials, type HtpasswdEvents } from './htpasswd.js';
import { PasswordChecker } from './password-checker.js';

/** The session cookie: the opened link itself, verified on every request. */
export const SESSION_COOKIE = 'tunnel_session';

/** Who a request is from, once allowed; `user` is undefined on routes open to anyone. */
export interface Visitor {
  readonly access: RouteAccessKind;
  readonly user: string | undefined;
  /** link access: the id of the link that opened the session. */
  readonly session?: string;
}

/** Why a request was refused, and how the browser may answer it. */
export class AccessRefusal extends TunnelError {
  constructor(
    error: TunnelError,
    /** Set for basic routes: the browser asks for a password. */
    readonly challenge: string | undefined,
  ) {
    super(error.code, error.message);
  }
}

export class HttpAccess {
  private verifier: LinkVerifier | undefined;
  /** htpasswd files by path: routes naming the same file share it. */
  private readonly files = new Map<string, Htpasswd>();
  private readonly checker = new PasswordChecker();
  /** Token and link ids revoked, as last read from the revocation file. */
  private revoked: ReadonlySet<string> = new Set();
  private readonly overrides: ReadonlyMap<string, { kind: RouteAccessKind; file?: string }>;

  constructor(
    private readonly config: Readonly<ServerConfig>,
    private readonly log: Logger,
  ) {
    this.overrides = new Map(
      config.httpRouteAccess.map((r) => [r.name, { kind: r.access, file: r.htpasswdFile }]),
    );
  }

  /**
   * Takes the token public keys the server read (links are signed with the token keys) and reads
   * the htpasswd files; a bad file stops the start (TUN_ERR_CONFIG).
   */
  async start(tokenPublicKeyPems: readonly string[]): Promise<void> {
    this.verifier = new LinkVerifier(tokenPublicKeyPems);
    const events: HtpasswdEvents = {
      onReloadFailed: (file, reason) =>
        this.log.error({ file, reason }, 'htpasswd file not reloaded; its previous users stay'),
      onReloaded: (file, users) => this.log.info({ file, users }, 'htpasswd file reloaded'),
    };
    const wanted = new Set<string>();
    if (this.config.httpAccess === 'basic') wanted.add(this.config.httpHtpasswdFile!);
    for (const { kind, file } of this.overrides.values()) {
      if (kind === 'basic') wanted.add(file ?? this.config.httpHtpasswdFile!);
    }
    for (const file of wanted) this.files.set(file, await Htpasswd.load(file, this.checker, events));
    for (const [route, { kind }] of this.overrides) {
      if (kind === 'none') this.log.warn({ route }, 'http route open to anyone (access none)');
    }
  }

  /** Idempotent; password checks still waiting are refused. */
  async close(): Promise<void> {
    await this.checker.close();
  }

  /** From the revocation watch: links (and their sessions) with these ids are refused. */
  setRevoked(revoked: ReadonlySet<string>): void {
    this.revoked = revoked;
  }

  kindOf(route: string): RouteAccessKind {
    return this.overrides.get(route)?.kind ?? this.config.httpAccess;
  }

  /** The visitor a request (or upgrade) comes from, or an AccessRefusal saying why not. */
  async admit(req: http.IncomingMessage, route: string, hostname: string): Promise<Visitor> {
    const access = this.kindOf(route);
    try {
      if (access === 'none') return { access, user: undefined };
      if (access === 'link') {
        const token = cookie(req.headers.cookie, SESSION_COOKIE);
        if (token === undefined) throw new TunnelError('TUN_ERR_ACCESS_DENIED', 'no session: open a link');
        const session = this.unrevoked(await this.verifier!.verify(token, hostname, false));
        return { access, user: session.user, session: session.id };
      }
      const credentials = basicCredentials(req.headers.authorization);
      if (credentials === undefined)
        throw new TunnelError('TUN_ERR_ACCESS_DENIED', 'a user and password are needed');
      const user = await this.htpasswdOf(route).verify(credentials.user, credentials.password);
      return { access, user };
    } catch (err) {
      const e = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_ACCESS_DENIED', 'refused');
      throw new AccessRefusal(
        e,
        access === 'basic' ? `Basic realm="${hostname}", charset="UTF-8"` : undefined,
      );
    }
  }

  /** The session a link opens on a link route; TUN_ERR_ACCESS_DENIED on any other route. */
  async openLink(token: string, route: string, hostname: string): Promise<LinkSession> {
    if (this.kindOf(route) !== 'link') {
      throw new TunnelError(
        'TUN_ERR_ACCESS_DENIED',
        `this route uses ${this.kindOf(route)} access, not links`,
      );
    }
    return this.unrevoked(await this.verifier!.verify(token, hostname, true));
  }

  private unrevoked(session: LinkSession): LinkSession {
    if (this.revoked.has(session.id)) throw new TunnelError('TUN_ERR_ACCESS_DENIED', 'session revoked');
    return session;
  }

  status(): { default: RouteAccessKind; routes: Record<string, RouteAccessKind> } {
    const routes: Record<string, RouteAccessKind> = {};
    for (const [route, { kind }] of this.overrides) routes[route] = kind;
    return { default: this.config.httpAccess, routes };
  }

  private htpasswdOf(route: string): Htpasswd {
    const file = this.overrides.get(route)?.file ?? this.config.httpHtpasswdFile!;
    return this.files.get(file)!;
  }
}

export function cookie(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
