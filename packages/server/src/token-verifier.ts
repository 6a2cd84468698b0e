import { createPublicKey } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { decodeProtectedHeader, errors as joseErrors, jwtVerify } from 'jose';
import type { JWTPayload, ProtectedHeaderParameters } from 'jose';
import { CLUSTER_ID_PATTERN, TunnelError, systemClock } from '@cluster-tunnel/protocol';
import type { Clock } from '@cluster-tunnel/protocol';
import { TOKEN_ALGORITHM, TOKEN_ISSUER, TOKEN_SUBJECT_PREFIX, keyIdOf } from './token-format.js';

/** Longer than any token we issue by far; refuse before parsing anything bigger. */
const MAX_TOKEN_CHARS = 4096;
const MAX_TOKEN_ID_CHARS = 128;
const DEFAULT_REVOCATION_CHECK_INTERVAL_MS = 500;

export interface TokenVerifierOptions {
  /** Ed25519 public keys (SPKI PEM) trusted to sign tokens; several during a key rotation. */
  publicKeyPems: readonly string[];
  /**
   * The `aud` every token must carry: this server's domain (`token create --domain`). A token
   * minted for another deployment sharing the signing key is refused here.
   */
  audience: string;
  /** Longest `exp - iat` accepted; undefined means no cap. Whole seconds are compared exactly. */
  maxLifetimeMs?: number;
  /** One revoked token id (`jti`) per line, `#` starts a comment. May not exist yet. */
  revocationFile?: string;
  /**
   * The file is stat()ed at most once per interval on verify, and once per interval while
   * watchRevocations() runs; a change is seen within it.
   */
  revocationCheckIntervalMs?: number;
  /** Leeway for `exp`, `nbf` and a future `iat` against clock skew between issuer and server. */
  clockToleranceMs?: number;
  /** Epoch milliseconds; injectable for tests. Also paces the revocation checks on verify. */
  now?: () => number;
  /** Timers of the revocation watch (default: unref'd real timers); injectable for tests. */
  timers?: Pick<Clock, 'setTimeout' | 'clearTimeout'>;
}

/** Called with the whole current set: first after the first read, then whenever it changes. */
export type RevocationListener = (revoked: ReadonlySet<string>) => void;
/**
 * Called when the revocation file starts failing to be read (once per run of failures, not per
 * check): verify() refuses every token meanwhile, while isRevoked() keeps the last set read.
 */
export type RevocationErrorListener = (err: TunnelError) => void;

interface RevocationWatcher {
  onChange: RevocationListener;
  onError: RevocationErrorListener | undefined;
  /** The set last passed to onChange; sets are replaced, never mutated, so identity is change. */
  notified: ReadonlySet<string> | undefined;
  /** onError was called for the current run of failed reads. */
  errorReported: boolean;
}

export interface VerifiedToken {
  clusterId: string;
  tokenId: string;
  expiresAt: Date;
}

/**
 * Verifies agent tokens: EdDSA only, key picked by `kid`, issuer, audience, expiry, issue time,
 * lifetime, claim shapes, then the revocation list. Errors are TunnelErrors with the
 * TUN_ERR_TOKEN_* / TUN_ERR_UNKNOWN_KEY codes. watchRevocations() lets the server end sessions
 * of tokens revoked after they connected.
 */
export class TokenVerifier {
  private readonly keys = new Map<string, KeyObject>();
  private readonly audience: string;
  private readonly maxLifetimeMs: number | undefined;
  private readonly revocationFile: string | undefined;
  private readonly revocationCheckIntervalMs: number;
  private readonly clockToleranceMs: number;
  private readonly now: () => number;
  private readonly timers: Pick<Clock, 'setTimeout' | 'clearTimeout'>;
  /** Replaced on every change and never mutated, so listeners may keep what they were given. */
  private revokedTokenIds: ReadonlySet<string> = new Set<string>();
  /** False until the file has been read once: watchers are told only about sets actually read. */
  private revocationsRead = false;
  /** Identity of the revocation file last read (inode, size, times), or 'absent'. */
  private revocationStamp: string | undefined;
  private nextRevocationCheckMs = Number.NEGATIVE_INFINITY;
  private revocationRefresh: Promise<void> | undefined;
  private readonly watchers: RevocationWatcher[] = [];
  private watchTimer: unknown;
  private closed = false;

  /** The trusted public keys as given (PEM): links are verified with the same keys (http-link.ts). */
  readonly publicKeyPems: readonly string[];

  constructor(options: TokenVerifierOptions) {
    this.publicKeyPems = Object.freeze([...options.publicKeyPems]);
    if (options.publicKeyPems.length === 0)
      throw new TunnelError('TUN_ERR_CONFIG', 'no token verification key configured');
    if (typeof options.audience !== 'string' || options.audience.length === 0)
      throw new TunnelError('TUN_ERR_CONFIG', 'the token verifier needs an audience (the server domain)');
    const { maxLifetimeMs, clockToleranceMs = 0, revocationCheckIntervalMs } = options;
    if (maxLifetimeMs !== undefined && !(Number.isSafeInteger(maxLifetimeMs) && maxLifetimeMs >= 1000)) {
      throw new TunnelError('TUN_ERR_CONFIG', `maxLifetimeMs must be at least 1000, not ${maxLifetimeMs}`);
    }
    if (!(Number.isFinite(clockToleranceMs) && clockToleranceMs >= 0)) {
      throw new TunnelError('TUN_ERR_CONFIG', `clockToleranceMs must be 0 or more, not ${clockToleranceMs}`);
    }
    if (revocationCheckIntervalMs !== undefined && !(revocationCheckIntervalMs > 0)) {
      throw new TunnelError(
        'TUN_ERR_CONFIG',
        `revocationCheckIntervalMs must be more than 0, not ${revocationCheckIntervalMs}`,
      );
    }
    for (const [index, pem] of options.publicKeyPems.entries()) {
      let key: KeyObject;
      try {
        key = createPublicKey(pem);
      } catch (cause) {
        throw new TunnelError('TUN_ERR_CONFIG', `token verification key #${index} is not a PEM public key`, {
          cause,
        });
      }
      this.keys.set(keyIdOf(key), key);
    }
    this.audience = options.audience;
    this.maxLifetimeMs = maxLifetimeMs;
    this.revocationFile = options.revocationFile;
    this.revocationCheckIntervalMs = revocationCheckIntervalMs ?? DEFAULT_REVOCATION_CHECK_INTERVAL_MS;
    this.clockToleranceMs = clockToleranceMs;
    this.now = options.now ?? Date.now;
    this.timers = options.timers ?? systemClock;
  }

  /** Key ids this verifier trusts. */
  get keyIds(): string[] {
    return [...this.keys.keys()];
  }

  async verify(token: string): Promise<VerifiedToken> {
    if (this.closed) throw new TunnelError('TUN_ERR_CONFIG', 'the token verifier is closed');
    if (typeof token !== 'string' || token.length === 0 || token.length > MAX_TOKEN_CHARS) {
      throw invalid('the token is empty or too long');
    }
    let header: ProtectedHeaderParameters;
    try {
      header = decodeProtectedHeader(token);
    } catch (cause) {
      throw invalid('the token is not a JWT', cause);
    }
    // Checked before any key is touched, so 'none' and HMAC-with-the-public-key tricks never reach jose.
    if (header.alg !== TOKEN_ALGORITHM)
      throw invalid(`the token algorithm ${String(header.alg)} is not ${TOKEN_ALGORITHM}`);
    if (typeof header.kid !== 'string') throw invalid('the token has no key id');
    const key = this.keys.get(header.kid);
    if (key === undefined) {
      throw new TunnelError(
        'TUN_ERR_UNKNOWN_KEY',
        `the token names key id ${JSON.stringify(header.kid)}, which is not trusted`,
        {
          details: { kid: header.kid },
        },
      );
    }

    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, key, {
        algorithms: [TOKEN_ALGORITHM],
        issuer: TOKEN_ISSUER,
        audience: this.audience,
        typ: 'JWT',
        requiredClaims: ['exp', 'iat', 'jti', 'sub'],
        currentDate: new Date(this.now()),
        clockTolerance: this.clockToleranceMs / 1000,
      }));
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) {
        throw new TunnelError('TUN_ERR_TOKEN_EXPIRED', 'the token has expired', {
          cause: err,
          details: { kid: header.kid },
        });
      }
      if (err instanceof joseErrors.JWTClaimValidationFailed && err.claim === 'aud') {
        // The usual cause is `token create` run without this server's --domain.
        const why = err.reason === 'missing' ? 'has no audience' : 'is for another audience';
        throw invalid(
          `the token ${why}; this server accepts only tokens for ${JSON.stringify(this.audience)} ` +
            '(tunnel-server token create --domain)',
          err,
        );
      }
      throw invalid('the token does not verify', err);
    }

    // jose compares `iat` with the clock only under maxTokenAge, which we do not use. createToken
    // rounds iat down to the second, so a token is surely from the future only when iat itself
    // is past now + tolerance: comparing in milliseconds refuses nothing issued before now.
    const issuedAt = payload.iat as number;
    if (issuedAt * 1000 > this.now() + this.clockToleranceMs) {
      throw invalid(
        `the token was issued in the future (iat ${issuedAt}, now ${Math.floor(this.now() / 1000)}); ` +
          "check the issuer's clock or the server's clock tolerance",
      );
    }
    const lifetimeMs = ((payload.exp as number) - issuedAt) * 1000;
    if (this.maxLifetimeMs !== undefined && lifetimeMs > this.maxLifetimeMs) {
      throw invalid(
        `the token lives ${formatMs(lifetimeMs)}, more than the ${formatMs(this.maxLifetimeMs)} this server ` +
          'allows; issue one with a shorter --ttl',
      );
    }

    const clusterId = payload['cluster'];
    if (typeof clusterId !== 'string' || !CLUSTER_ID_PATTERN.test(clusterId))
      throw invalid('the token has no valid cluster claim');
    if (payload.sub !== `${TOKEN_SUBJECT_PREFIX}${clusterId}`)
      throw invalid('the token subject does not match its cluster');
    const tokenId = payload.jti;
    if (typeof tokenId !== 'string' || tokenId.length === 0 || tokenId.length > MAX_TOKEN_ID_CHARS) {
      throw invalid('the token id is missing or too long');
    }

    await this.refreshRevocations();
    if (this.revokedTokenIds.has(tokenId)) {
      throw new TunnelError('TUN_ERR_TOKEN_REVOKED', `token ${tokenId} is revoked`, {
        details: { tokenId, clusterId },
      });
    }
    return { clusterId, tokenId, expiresAt: new Date((payload.exp as number) * 1000) };
  }

  /** True when `tokenId` is in the revocation set as last read (by verify or the watch). */
  isRevoked(tokenId: string): boolean {
    return this.revokedTokenIds.has(tokenId);
  }

  /**
   * Re-reads the revocation file every revocationCheckIntervalMs on a timer that does not keep
   * the process alive, until close(). `onChange` gets the whole current set after the first read
   * and after every change; `onError` hears of a file that stops being readable (see
   * RevocationErrorListener). Without a revocation file, `onChange` gets the empty set once.
   * A listener that throws does not stop the watch: its error is rethrown from process.nextTick.
   */
  watchRevocations(onChange: RevocationListener, onError?: RevocationErrorListener): void {
    if (this.closed) throw new TunnelError('TUN_ERR_CONFIG', 'the token verifier is closed');
    this.watchers.push({ onChange, onError, notified: undefined, errorReported: false });
    if (this.revocationFile === undefined) {
      this.revocationsRead = true;
      queueMicrotask(() => this.notifyWatchers());
      return;
    }
    if (this.watchers.length === 1) this.checkRevocationsNow();
    // A later watcher still gets the current set, once the file has been read.
    else if (this.revocationsRead) queueMicrotask(() => this.notifyWatchers());
  }

  /** Idempotent; later verify() calls fail and the revocation watch stops. */
  async close(): Promise<void> {
    this.closed = true;
    this.watchers.length = 0;
    if (this.watchTimer !== undefined) this.timers.clearTimeout(this.watchTimer);
    this.watchTimer = undefined;
    await this.revocationRefresh?.catch(() => {});
  }

  /** One watch tick: read now, whoever read last, then arm the next tick after it finishes. */
  private checkRevocationsNow(): void {
    this.watchTimer = undefined;
    this.refreshRevocations(true)
      // Already reported to onError by readRevocations; the next tick tries again.
      .catch(() => {})
      .finally(() => {
        if (this.closed || this.watchers.length === 0) return;
        // Armed after the read, not on an interval, so a slow disk never stacks reads.
        this.watchTimer = this.timers.setTimeout(
          () => this.checkRevocationsNow(),
          this.revocationCheckIntervalMs,
        );
      });
  }

  private async refreshRevocations(force = false): Promise<void> {
    if (this.revocationFile === undefined) return;
    if (!force && this.now() < this.nextRevocationCheckMs) return;
    // Concurrent verifies and the watch share one stat/read.
    this.revocationRefresh ??= this.readRevocations(this.revocationFile).finally(() => {
      this.revocationRefresh = undefined;
    });
    await this.revocationRefresh;
  }

  private async readRevocations(file: string): Promise<void> {
    try {
      // stat, not fs.watch: works when the file does not exist yet and when it is replaced by
      // rename (the inode changes), and holds no handle open between checks.
      const stats = await stat(file, { bigint: true }).catch(ignoreMissing);
      const stamp = stats ? `${stats.ino}:${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}` : 'absent';
      if (stamp !== this.revocationStamp) {
        const text = stats ? await readFile(file, 'utf8').catch(ignoreMissing) : undefined;
        const next = parseRevocations(text ?? '');
        // Replace only on a real change, so a touch or a comment edit tells no one anything.
        if (!sameSet(next, this.revokedTokenIds)) this.revokedTokenIds = next;
        // A change between stat and read leaves an older stamp: the next check reads again.
        this.revocationStamp = stamp;
      }
      this.nextRevocationCheckMs = this.now() + this.revocationCheckIntervalMs;
    } catch (cause) {
      // Fail closed: a revocation list that cannot be read must not let revoked tokens in, so
      // the next verify() reads again (and fails) even if a good read was less than an interval ago.
      this.nextRevocationCheckMs = Number.NEGATIVE_INFINITY;
      const err = new TunnelError('TUN_ERR_CONFIG', `cannot read the revocation file ${file}`, {
        cause,
        retryable: true,
      });
      for (const watcher of this.watchers) {
        if (watcher.errorReported) continue;
        watcher.errorReported = true;
        callListener(() => watcher.onError?.(err));
      }
      throw err;
    }
    for (const watcher of this.watchers) watcher.errorReported = false;
    this.revocationsRead = true;
    // close() empties the watchers, so nothing is told after it.
    this.notifyWatchers();
  }

  private notifyWatchers(): void {
    if (!this.revocationsRead) return;
    const current = this.revokedTokenIds;
    for (const watcher of this.watchers) {
      if (watcher.notified === current) continue;
      watcher.notified = current;
      callListener(() => watcher.onChange(current));
    }
  }
}

/** One token id per line; `#` starts a comment; blank lines are ignored. */
export function parseRevocations(text: string): Set<string> {
  const tokenIds = new Set<string>();
  for (const line of text.split(/\r?\n/)) {
    const tokenId = (line.split('#', 1)[0] as string).trim().split(/\s+/, 1)[0];
    if (tokenId) tokenIds.add(tokenId);
  }
  return tokenIds;
}

/** 8760h, 90s or 1500ms: the units of `--ttl`, so the limit reads as the flag is written. */
function formatMs(ms: number): string {
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

function sameSet(a: ReadonlySet<string>, b: ReadonlySet<string>): boolean {
  if (a.size !== b.size) return false;
  for (const item of a) if (!b.has(item)) return false;
  return true;
}

/** Runs a caller's listener so that its bug surfaces as an uncaught error, not as ours. */
function callListener(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    process.nextTick(() => {
      throw err;
    });
  }
}

function ignoreMissing(err: NodeJS.ErrnoException): undefined {
  if (err.code === 'ENOENT') return undefined;
  throw err;
}

function invalid(message: string, cause?: unknown): TunnelError {
  return new TunnelError('TUN_ERR_TOKEN_INVALID', message, { cause });
}
