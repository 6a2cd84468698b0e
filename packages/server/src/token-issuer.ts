import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { CLUSTER_ID_PATTERN, TunnelError, isValidClusterId } from '@cluster-tunnel/protocol';
import { isDnsName } from '@cluster-tunnel/config';
import { readOptional, writeAtomic } from './data-file.js';
import { TOKEN_ALGORITHM, TOKEN_ISSUER, TOKEN_SUBJECT_PREFIX, keyIdOf } from './token-format.js';

export const SIGNING_KEY_FILES = {
  /** PKCS#8 PEM, mode 0600. */
  privateKey: 'token-signing.key',
  /** SPKI PEM; give it to every server replica that verifies tokens. */
  publicKey: 'token-signing.pub',
} as const;

export interface SigningKeyPair {
  privateKeyPem: string;
  publicKeyPem: string;
  keyId: string;
  /** False when the files already existed and were only read. */
  created: boolean;
}

export interface CreateTokenOptions {
  privateKeyPem: string;
  clusterId: string;
  /**
   * The `aud` claim: the domain of the tunnel server that is to accept the token, in the form
   * the server's config keeps it (lower case, no trailing dot), e.g. `proxy.localhost`.
   */
  audience: string;
  /** Lifetime; `exp - iat` is this rounded down to whole seconds, never more. */
  ttlMs: number;
  /** Epoch milliseconds; injectable for tests. */
  now?: () => number;
}

/** Parses an Ed25519 private key PEM; anything else is TUN_ERR_CONFIG. */
export function loadSigningKey(privateKeyPem: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey(privateKeyPem);
  } catch (cause) {
    throw new TunnelError('TUN_ERR_CONFIG', 'the token signing key is not a PEM private key', { cause });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new TunnelError('TUN_ERR_CONFIG', `the token signing key is ${key.asymmetricKeyType}, not ed25519`);
  }
  return key;
}

/**
 * Ensures `dir` holds a token signing key pair, creating what is missing. A public key without
 * its private key is left alone (a verify-only replica) and reported as TUN_ERR_CONFIG, since a
 * new pair would silently invalidate every token signed so far.
 */
export async function loadOrCreateSigningKeyPair(dir: string): Promise<SigningKeyPair> {
  const privatePath = join(dir, SIGNING_KEY_FILES.privateKey);
  const publicPath = join(dir, SIGNING_KEY_FILES.publicKey);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  let privateKeyPem = await readOptional(privatePath);
  const existingPublicPem = await readOptional(publicPath);
  let created = false;
  if (privateKeyPem === undefined) {
    if (existingPublicPem !== undefined) {
      throw new TunnelError(
        'TUN_ERR_CONFIG',
        `${publicPath} exists but its private key ${privatePath} does not`,
      );
    }
    const { privateKey } = generateKeyPairSync('ed25519');
    privateKeyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    await writeAtomic(privatePath, privateKeyPem, 0o600);
    created = true;
  }
  const privateKey = loadSigningKey(privateKeyPem);
  const publicKeyPem = createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }) as string;
  if (existingPublicPem === undefined) {
    await writeAtomic(publicPath, publicKeyPem, 0o644);
    created = true;
  } else if (keyIdOf(parsePublicKey(existingPublicPem, publicPath)) !== keyIdOf(privateKey)) {
    throw new TunnelError('TUN_ERR_CONFIG', `${publicPath} does not belong to ${privatePath}`);
  }
  return { privateKeyPem, publicKeyPem, keyId: keyIdOf(privateKey), created };
}

/** Signs an agent token for `clusterId` on the server of domain `audience`, valid for `ttlMs` from now. */
export async function createToken(options: CreateTokenOptions): Promise<string> {
  if (!isValidClusterId(options.clusterId)) {
    throw new TunnelError('TUN_ERR_CONFIG', `invalid cluster id ${JSON.stringify(options.clusterId)}`, {
      details: { pattern: CLUSTER_ID_PATTERN.source },
    });
  }
  const { audience } = options;
  // The server lower-cases its domain and drops a trailing dot; a token for any other spelling
  // would be refused there, so refuse it here where the mistake is made.
  if (typeof audience !== 'string' || !isDnsName(audience) || audience !== audience.toLowerCase()) {
    throw new TunnelError(
      'TUN_ERR_CONFIG',
      `token audience ${JSON.stringify(audience)} is not a lower-case DNS name like proxy.example.com`,
    );
  }
  if (!Number.isFinite(options.ttlMs) || options.ttlMs < 1000) {
    throw new TunnelError('TUN_ERR_CONFIG', `token ttlMs must be at least 1000, not ${options.ttlMs}`);
  }
  const privateKey = loadSigningKey(options.privateKeyPem);
  const nowMs = (options.now ?? Date.now)();
  // JWT times are whole seconds. exp is iat plus the ttl rounded down, so `exp - iat` never
  // exceeds the ttl (a server's lifetime cap equal to the ttl accepts the token) and the token
  // never outlives the ttl asked for.
  const issuedAt = Math.floor(nowMs / 1000);
  return new SignJWT({ cluster: options.clusterId })
    .setProtectedHeader({ alg: TOKEN_ALGORITHM, kid: keyIdOf(privateKey), typ: 'JWT' })
    .setIssuer(TOKEN_ISSUER)
    .setSubject(`${TOKEN_SUBJECT_PREFIX}${options.clusterId}`)
    .setJti(randomBytes(16).toString('base64url'))
    .setAudience(audience)
    .setIssuedAt(issuedAt)
    .setExpirationTime(issuedAt + Math.floor(options.ttlMs / 1000))
    .sign(privateKey);
}

function parsePublicKey(pem: string, source: string): KeyObject {
  try {
    return createPublicKey(pem);
  } catch (cause) {
    throw new TunnelError('TUN_ERR_CONFIG', `${source} is not a PEM public key`, { cause });
  }
}
