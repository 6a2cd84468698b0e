/**
 * Signed links for http routes: `tunnel-server link create` signs one with the token signing key
 * (Ed25519), bound to one route hostname. Opening it before `exp` (minutes) sets it as the
 * session cookie, which every replica verifies with the public keys alone until `sessionExp`
 * (hours). No server keeps session state, so any replica serves any request; a link's id (`jti`)
 * in the revocation file ends it and the session it opened, as it does an agent token.
 */
import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { SignJWT, compactVerify, decodeJwt, decodeProtectedHeader } from 'jose';
import { TunnelError } from '@cluster-tunnel/protocol';
import { TOKEN_ALGORITHM, TOKEN_ISSUER, keyIdOf } from './token-format.js';
import { loadSigningKey } from './token-issuer.js';

/** The `use` claim that tells a link from an agent token (which has none). */
export const LINK_USE = 'http-link';
/** Longer than any link we sign by far; refuse before parsing anything bigger. */
const MAX_LINK_CHARS = 2048;
/** Verified sessions kept (the cache is dropped whole when full: a flood of fresh cookies costs checks, not memory). */
const MAX_VERIFIED_SESSIONS = 4096;
/** Users are names in logs and audit lines: a safe alphabet. */
export const LINK_USER_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

export interface CreateLinkOptions {
  privateKeyPem: string;
  /** The route hostname the link opens, e.g. `cluster-u1-dash.proxy.localhost`. */
  hostname: string;
  user: string;
  /** How long the link may be opened. */
  ttlMs: number;
  /** How long the session it starts lasts. */
  sessionTtlMs: number;
  now?: () => number;
}

/** A verified session: who, for which hostname, until when. */
export interface LinkSession {
  /** The link's id (`jti`): revoking it ends the session. */
  id: string;
  user: string;
  hostname: string;
  sessionExpiresAt: Date;
  /** When the link itself stops opening (sessions outlive it). */
  linkExpiresAt: Date;
}

export async function createLink(o: CreateLinkOptions): Promise<string> {
  const key = loadSigningKey(o.privateKeyPem);
  if (!LINK_USER_PATTERN.test(o.user)) {
    throw new TunnelError('TUN_ERR_CONFIG', `user must match ${LINK_USER_PATTERN.source}`);
  }
  const nowS = Math.floor((o.now ?? Date.now)() / 1000);
  return new SignJWT({ use: LINK_USE, sessionExp: nowS + Math.floor(o.sessionTtlMs / 1000) })
    .setProtectedHeader({ alg: TOKEN_ALGORITHM, kid: keyIdOf(key), typ: 'JWT' })
    .setIssuer(TOKEN_ISSUER)
    .setAudience(o.hostname)
    .setSubject(o.user)
    .setJti(randomBytes(16).toString('base64url'))
    .setIssuedAt(nowS)
    .setExpirationTime(nowS + Math.floor(o.ttlMs / 1000))
    .sign(key);
}

/** The id of a link this server signed (not verified: for printing what was just made). */
export function linkIdOf(token: string): string {
  return String(decodeJwt(token).jti);
}

/** Verifies links and session cookies with the trusted public keys (kid → key). */
export class LinkVerifier {
  private readonly keys = new Map<string, KeyObject>();
  /**
   * Sessions already verified, by token and hostname: a browser sends the same cookie with every
   * request, and a signature check per request would cost more than the request. Bounded; an
   * entry is used only until its session expires.
   */
  private readonly verified = new Map<string, LinkSession>();

  constructor(publicKeyPems: readonly string[]) {
    for (const pem of publicKeyPems) {
      const key = createPublicKey(pem);
      this.keys.set(keyIdOf(key), key);
    }
  }

  /**
   * The session a link or cookie carries for `hostname`, or a TunnelError
   * (TUN_ERR_ACCESS_DENIED) saying why not. `asLink` also requires the link not to have expired.
   */
  async verify(token: string, hostname: string, asLink: boolean, nowMs = Date.now()): Promise<LinkSession> {
    const denied = (why: string): TunnelError => new TunnelError('TUN_ERR_ACCESS_DENIED', why);
    const cacheKey = `${hostname} ${token}`;
    const known = asLink ? undefined : this.verified.get(cacheKey);
    if (known !== undefined) {
      if (known.sessionExpiresAt.getTime() > nowMs) return known;
      this.verified.delete(cacheKey);
      throw denied('session expired');
    }
    if (token.length > MAX_LINK_CHARS) throw denied('link too long');
    let kid: string | undefined;
    try {
      kid = decodeProtectedHeader(token).kid;
    } catch {
      throw denied('not a link');
    }
    const key = kid === undefined ? undefined : this.keys.get(kid);
    if (key === undefined) throw denied('link signed by an unknown key');
    let payload: Record<string, unknown>;
    try {
      const verified = await compactVerify(token, key, { algorithms: [TOKEN_ALGORITHM] });
      payload = JSON.parse(new TextDecoder().decode(verified.payload)) as Record<string, unknown>;
    } catch {
      throw denied('link signature invalid');
    }
    const { iss, aud, sub, exp, sessionExp, use, jti } = payload;
    if (use !== LINK_USE || iss !== TOKEN_ISSUER) throw denied('not a link');
    if (aud !== hostname) throw denied(`link is for another hostname`);
    if (typeof sub !== 'string' || !LINK_USER_PATTERN.test(sub)) throw denied('link names no user');
    if (typeof exp !== 'number' || typeof sessionExp !== 'number') throw denied('link has no expiry');
    if (typeof jti !== 'string' || jti.length === 0 || jti.length > 64) throw denied('link has no id');
    const nowS = nowMs / 1000;
    if (asLink && exp <= nowS) throw denied('link expired');
    if (sessionExp <= nowS) throw denied('session expired');
    const session = {
      id: jti,
      user: sub,
      hostname,
      sessionExpiresAt: new Date(sessionExp * 1000),
      linkExpiresAt: new Date(exp * 1000),
    };
    if (this.verified.size >= MAX_VERIFIED_SESSIONS) this.verified.clear();
    this.verified.set(cacheKey, session);
    return session;
  }
}
