import { createPublicKey } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { decodeProtectedHeader, errors as joseErrors, jwtVerify } from 'jose';
import type { JWTPayload, ProtectedHeaderParameters } from 'jose';
import { TunnelError } from '@cluster-tunnel/protocol';
import {
  CLUSTER_ID_PATTERN,
  TOKEN_ALGORITHM,
  TOKEN_ISSUER,
  TOKEN_SUBJECT_PREFIX,
  keyIdOf,
} from './token-issuer.js';

/** Longer than any token we issue by far; refuse before parsing anything bigger. */
const MAX_TOKEN_CHARS = 4096;
const MAX_TOKEN_ID_CHARS = 128;
const DEFAULT_REVOCATION_CHECK_INTERVAL_MS = 500;

export interface TokenVerifierOptions {
  /** Ed25519 public keys (SPKI PEM) trusted to sign tokens; several during a key rotation. */
  publicKeyPems: readonly string[];
  /** One revoked token id (`jti`) per line, `#` starts a comment. May not exist yet. */
  revocationFile?: string;
  /** The file is stat()ed at most once per interval, on verify; a change is seen within it. */
  revocationCheckIntervalMs?: number;
  /** Leeway for `exp` and `nbf` against clock skew between the issuer and this server. */
  clockToleranceMs?: number;
  /** Epoch milliseconds; injectable for tests. Also paces the revocation checks. */
  now?: () => number;
}

export interface VerifiedToken {
  clusterId: string;
  tokenId: string;
  expiresAt: Date;
}

/**
 * Verifies agent tokens: EdDSA only, key picked by `kid`, issuer, expiry, claim shapes, then
 * the revocation list. Errors are TunnelErrors with the TUN_ERR_TOKEN_* / TUN_ERR_UNKNOWN_KEY codes.
 */
export class TokenVerifier {
  private readonly keys = new Map<string, KeyObject>();
  private readonly revocationFile: string | undefined;
  private readonly revocationCheckIntervalMs: number;
  private readonly clockToleranceSec: number;
  private readonly now: () => number;
  private revokedTokenIds = new Set<string>();
  /** Identity of the revocation file last read (inode, size, times), or 'absent'. */
  private revocationStamp: string | undefined;
  private nextRevocationCheckMs = Number.NEGATIVE_INFINITY;
  private revocationRefresh: Promise<void> | undefined;
  private closed = false;

  constructor(options: TokenVerifierOptions) {
    if (options.publicKeyPems.length === 0)
      throw new TunnelError('TUN_ERR_CONFIG', 'no token verification key configured');
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
    this.revocationFile = options.revocationFile;
    this.revocationCheckIntervalMs =
      options.revocationCheckIntervalMs ?? DEFAULT_REVOCATION_CHECK_INTERVAL_MS;
    this.clockToleranceSec = (options.clockToleranceMs ?? 0) / 1000;
    this.now = options.now ?? Date.now;
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
        typ: 'JWT',
        requiredClaims: ['exp', 'iat', 'jti', 'sub'],
        currentDate: new Date(this.now()),
        clockTolerance: this.clockToleranceSec,
      }));
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) {
        throw new TunnelError('TUN_ERR_TOKEN_EXPIRED', 'the token has expired', {
          cause: err,
          details: { kid: header.kid },
        });
      }
      throw invalid('the token does not verify', err);
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

  /** Idempotent; later verify() calls fail. Nothing is watched between calls, so nothing leaks. */
  async close(): Promise<void> {
    this.closed = true;
    await this.revocationRefresh?.catch(() => {});
  }

  private async refreshRevocations(): Promise<void> {
    if (this.revocationFile === undefined || this.now() < this.nextRevocationCheckMs) return;
    // Concurrent verifies share one stat/read.
    this.revocationRefresh ??= this.readRevocations(this.revocationFile).finally(() => {
      this.revocationRefresh = undefined;
    });
    await this.revocationRefresh;
  }

  private async readRevocations(file: string): Promise<void> {
    try {
      // stat, not a watcher: works when the file does not exist yet and when it is replaced by
      // rename (the inode changes), and holds no handle open between calls.
      const stats = await stat(file, { bigint: true }).catch(ignoreMissing);
      const stamp = stats ? `${stats.ino}:${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}` : 'absent';
      if (stamp !== this.revocationStamp) {
        const text = stats ? await readFile(file, 'utf8').catch(ignoreMissing) : undefined;
        this.revokedTokenIds = parseRevocations(text ?? '');
        // A change between stat and read leaves an older stamp: the next check reads again.
        this.revocationStamp = stamp;
      }
      this.nextRevocationCheckMs = this.now() + this.revocationCheckIntervalMs;
    } catch (cause) {
      // Fail closed: a revocation list that cannot be read must not let revoked tokens in.
      throw new TunnelError('TUN_ERR_CONFIG', `cannot read the revocation file ${file}`, {
        cause,
        retryable: true,
      });
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

function ignoreMissing(err: NodeJS.ErrnoException): undefined {
  if (err.code === 'ENOENT') return undefined;
  throw err;
}

function invalid(message: string, cause?: unknown): TunnelError {
  return new TunnelError('TUN_ERR_TOKEN_INVALID', message, { cause });
}
