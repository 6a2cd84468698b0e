/**
 * What an agent token looks like, shared by the issuer (token-issuer.ts) and the verifier
 * (token-verifier.ts): an Ed25519-signed JWT whose `sub` names one cluster (docs/SECURITY.md).
 */
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { TunnelError } from '@cluster-tunnel/protocol';

/** The `iss` claim of every agent token. */
export const TOKEN_ISSUER = 'cluster-tunnel';
/** The only signature algorithm tokens use or verifiers accept (Ed25519). */
export const TOKEN_ALGORITHM = 'EdDSA';
/** The `sub` claim is this prefix followed by the cluster id. */
export const TOKEN_SUBJECT_PREFIX = 'cluster:';

/**
 * The `kid` of a key: base64url of the first 8 bytes of SHA-256 over the raw 32-byte Ed25519
 * public key, so issuer and verifier derive the same id from either half of the pair.
 */
export function keyIdOf(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = publicKey.export({ format: 'jwk' });
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
    throw new TunnelError('TUN_ERR_CONFIG', 'token signing keys must be Ed25519');
  }
  const raw = Buffer.from(jwk.x, 'base64url');
  return createHash('sha256').update(raw).digest().subarray(0, 8).toString('base64url');
}
