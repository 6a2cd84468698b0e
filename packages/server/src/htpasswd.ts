/**
 * Passwords for `basic` access to http routes: an htpasswd file of `user:bcrypt-hash` lines, as
 * Apache's `htpasswd -B` writes them. Only bcrypt is accepted: the older htpasswd formats (MD5,
 * SHA-1, crypt) are fast to brute-force. The file is re-read when it changes, so adding or
 * removing a user needs no restart. Limits (docs/SECURITY.md, "http routes"): the file size,
 * the bcrypt cost, checks in flight at once (password-checker.ts), and a bounded cache of
 * passwords already checked.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { TunnelError } from '@cluster-tunnel/protocol';
import type { PasswordChecker } from './password-checker.js';

/** A bigger file is refused rather than read. */
export const MAX_HTPASSWD_BYTES = 1024 * 1024;
/** Cost 12 is about 0.3 s of CPU per check here; higher would let a few logins stall a core. */
export const MAX_BCRYPT_COST = 12;
/** A password checked right is trusted this long without another bcrypt (browsers resend it). */
export const PASSWORD_CACHE_TTL_MS = 5 * 60_000;
/** Checked passwords kept; the cache is dropped whole when full. */
const MAX_CACHED_PASSWORDS = 1024;
/** Longer credentials are refused without hashing. */
const MAX_CREDENTIAL_BYTES = 1024;
/** How often a request may make the file be stat'ed for changes. */
const RELOAD_CHECK_INTERVAL_MS = 2000;
const BCRYPT_HASH = /^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$/;

/** `user → hash` from htpasswd text, or every problem found (never echoing a hash). */
export function parseHtpasswd(text: string): Map<string, string> | string[] {
  const users = new Map<string, string>();
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const at = `line ${index + 1}`;
    const colon = line.indexOf(':');
    const user = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (colon <= 0) return void problems.push(`${at}: expected user:hash`);
    if (users.has(user)) return void problems.push(`${at}: user ${JSON.stringify(user)} is listed twice`);
    const match = BCRYPT_HASH.exec(hash);
    if (match === null) {
      return void problems.push(
        `${at}: user ${JSON.stringify(user)}: not a bcrypt hash (only bcrypt is accepted: htpasswd -B)`,
      );
    }
    const cost = Number(match[1]);
    if (cost < 4 || cost > MAX_BCRYPT_COST) {
      return void problems.push(
        `${at}: user ${JSON.stringify(user)}: bcrypt cost ${cost} is outside 4..${MAX_BCRYPT_COST}`,
      );
    }
    users.set(user, hash);
  });
  return problems.length > 0 ? problems : users;
}

/** `Authorization: Basic …` → user and password, or undefined when absent or malformed. */
export function basicCredentials(header: string | undefined): { user: string; password: string } | undefined {
  const match = /^Basic +([A-Za-z0-9+/=]+) *$/i.exec(header ?? '');
  if (match === null || match[1]!.length > (MAX_CREDENTIAL_BYTES * 4) / 3 + 4) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

export interface HtpasswdEvents {
  /** A re-read failed or found problems; the users read before stay in force. */
  onReloadFailed(file: string, reason: string): void;
  onReloaded(file: string, users: number): void;
}

/** One htpasswd file's users, re-read when the file changes. */
export class Htpasswd {
  private users = new Map<string, string>();
  private stamp = '';
  private nextCheckMs = 0;
  private reloading: Promise<void> | undefined;
  /** sha256(user, password) → when trusting it ends. */
  private readonly checked = new Map<string, number>();

  private constructor(
    readonly file: string,
    private readonly checker: PasswordChecker,
    private readonly events: HtpasswdEvents,
    private readonly now: () => number,
  ) {}

  /** Reads the file; throws TUN_ERR_CONFIG naming every problem (the server does not start). */
  static async load(
    file: string,
    checker: PasswordChecker,
    events: HtpasswdEvents,
    now = Date.now,
  ): Promise<Htpasswd> {
    const htpasswd = new Htpasswd(file, checker, events, now);
    const problem = await htpasswd.read();
    if (problem !== undefined) throw new TunnelError('TUN_ERR_CONFIG', `htpasswd file ${file}: ${problem}`);
    return htpasswd;
  }

  get size(): number {
    return this.users.size;
  }

  /**
   * The user when the credentials are right; TUN_ERR_ACCESS_DENIED when not, or
   * TUN_ERR_LIMIT_EXCEEDED (retryable) when too many checks are running already.
   */
  async verify(user: string, password: string): Promise<string> {
    const denied = new TunnelError('TUN_ERR_ACCESS_DENIED', 'wrong user or password');
    if (Buffer.byteLength(user) + Buffer.byteLength(password) > MAX_CREDENTIAL_BYTES) throw denied;
    await this.reloadIfChanged();
    const key = createHash('sha256').update(user).update('\0').update(password).digest('base64');
    const trustedUntil = this.checked.get(key);
    if (trustedUntil !== undefined && trustedUntil > this.now() && this.users.has(user)) return user;
    this.checked.delete(key);
    const hash = this.users.get(user);
    // An unknown user costs the same bcrypt as a known one, so timing does not tell them apart.
    const against = hash ?? this.users.values().next().value;
    if (against === undefined) throw denied;
    const computed = Buffer.from(await this.checker.hash(password, against.slice(0, 29)));
    const expected = Buffer.from(against);
    const same = computed.length === expected.length && timingSafeEqual(computed, expected);
    if (!same || hash === undefined) throw denied;
    if (this.checked.size >= MAX_CACHED_PASSWORDS) this.checked.clear();
    this.checked.set(key, this.now() + PASSWORD_CACHE_TTL_MS);
    return user;
  }

  private async reloadIfChanged(): Promise<void> {
    if (this.now() < this.nextCheckMs) return;
    this.nextCheckMs = this.now() + RELOAD_CHECK_INTERVAL_MS;
    // Concurrent requests share one stat and read.
    this.reloading ??= this.read()
      .then((problem) => {
        if (problem !== undefined) this.events.onReloadFailed(this.file, problem);
      })
      .finally(() => {
        this.reloading = undefined;
      });
    await this.reloading;
  }

  /** Reads the file when its stamp changed; a problem (returned) leaves the users as they were. */
  private async read(): Promise<string | undefined> {
    let text: string;
    let stamp: string;
    try {
      const stats = await stat(this.file, { bigint: true });
      stamp = `${stats.ino}:${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}`;
      if (stamp === this.stamp) return undefined;
      if (stats.size > MAX_HTPASSWD_BYTES) return `larger than ${MAX_HTPASSWD_BYTES} bytes`;
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      return `cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
    }
    const parsed = parseHtpasswd(text);
    if (Array.isArray(parsed)) return parsed.join('; ');
    const first = this.stamp === '';
    this.users = parsed;
    this.stamp = stamp;
    // A changed file may have changed a password: nothing checked before is trusted.
    this.checked.clear();
    if (!first) this.events.onReloaded(this.file, parsed.size);
    return undefined;
  }
}
