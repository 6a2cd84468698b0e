import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, decodeJwt, decodeProtectedHeader } from 'jose';
import { describe, expect, it, onTestFinished } from 'vitest';
import {
  SIGNING_KEY_FILES,
  createToken,
  generateSigningKeyPair,
  keyIdOf,
} from '../../packages/server/src/token-issuer.js';
import { TokenVerifier, parseRevocations } from '../../packages/server/src/token-verifier.js';
import type { TokenVerifierOptions } from '../../packages/server/src/token-verifier.js';

const HOUR_MS = 3_600_000;

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ct-token-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function keyPair(): { privateKeyPem: string; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
  };
}

function verifier(options: TokenVerifierOptions): TokenVerifier {
  const tokenVerifier = new TokenVerifier(options);
  onTestFinished(() => tokenVerifier.close());
  return tokenVerifier;
}

/** Signs arbitrary header and claims with `privateKeyPem`, bypassing createToken's checks. */
async function signRaw(
  header: Record<string, unknown>,
  payload: Record<string, unknown>,
  privateKeyPem: string,
): Promise<string> {
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'EdDSA', ...header })
    .sign(createPrivateKey(privateKeyPem));
}

function unsignedToken(
  header: Record<string, unknown>,
  payload: Record<string, unknown>,
  signature = '',
): string {
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${encode(header)}.${encode(payload)}.${signature}`;
}

describe('generateSigningKeyPair', () => {
  it('writes a private key readable only by the owner and its public key, once', async () => {
    const dir = await tempDir();
    const first = await generateSigningKeyPair(dir);
    expect(first.created).toBe(true);
    expect((await stat(join(dir, SIGNING_KEY_FILES.privateKey))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(dir, SIGNING_KEY_FILES.publicKey), 'utf8')).toBe(first.publicKeyPem);
    const second = await generateSigningKeyPair(dir);
    expect(second).toEqual({ ...first, created: false });
  });

  it('derives a missing public key file from the private key', async () => {
    const dir = await tempDir();
    const first = await generateSigningKeyPair(dir);
    await unlink(join(dir, SIGNING_KEY_FILES.publicKey));
    const second = await generateSigningKeyPair(dir);
    expect(second.publicKeyPem).toBe(first.publicKeyPem);
    expect(second.keyId).toBe(first.keyId);
  });

  it('refuses to replace a private key that is missing while its public key exists', async () => {
    const dir = await tempDir();
    await generateSigningKeyPair(dir);
    await unlink(join(dir, SIGNING_KEY_FILES.privateKey));
    await expect(generateSigningKeyPair(dir)).rejects.toMatchObject({ code: 'TUN_ERR_CONFIG' });
  });
});

describe('createToken', () => {
  it('issues an EdDSA JWT with the documented claims and key id', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const nowMs = Date.UTC(2030, 0, 1);
    const token = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS, now: () => nowMs });
    const rawPublicKey = Buffer.from(
      createPublicKey(publicKeyPem).export({ format: 'jwk' }).x as string,
      'base64url',
    );
    const expectedKid = createHash('sha256')
      .update(rawPublicKey)
      .digest()
      .subarray(0, 8)
      .toString('base64url');
    expect(decodeProtectedHeader(token)).toEqual({ alg: 'EdDSA', kid: expectedKid, typ: 'JWT' });
    expect(keyIdOf(createPublicKey(publicKeyPem))).toBe(expectedKid);
    const claims = decodeJwt(token);
    expect(claims).toMatchObject({
      iss: 'cluster-tunnel',
      sub: 'cluster:u1',
      cluster: 'u1',
      iat: nowMs / 1000,
      exp: (nowMs + HOUR_MS) / 1000,
    });
    expect(claims.jti).toMatch(/^[A-Za-z0-9_-]{16,}$/);
    const other = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS, now: () => nowMs });
    expect(decodeJwt(other).jti).not.toBe(claims.jti);
  });

  it.each(['', 'U1', '-u1', 'u1-', 'u1-prod', 'u_1', 'a'.repeat(33), 'u1.x'])(
    'refuses the bad cluster id %j',
    async (clusterId) => {
      const { privateKeyPem } = keyPair();
      await expect(createToken({ privateKeyPem, clusterId, ttlMs: HOUR_MS })).rejects.toMatchObject({
        code: 'TUN_ERR_CONFIG',
      });
    },
  );

  it('accepts the longest and shortest valid cluster ids', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem] });
    for (const clusterId of ['a', '0', 'a'.repeat(32), 'u1prodeu']) {
      const token = await createToken({ privateKeyPem, clusterId, ttlMs: HOUR_MS });
      await expect(tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId });
    }
  });
});

describe('TokenVerifier', () => {
  it('accepts a valid token and reports its cluster, id and expiry', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const nowMs = Date.now();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS, now: () => nowMs });
    const verified = await verifier({ publicKeyPems: [publicKeyPem] }).verify(token);
    expect(verified).toEqual({
      clusterId: 'u1',
      tokenId: decodeJwt(token).jti,
      expiresAt: new Date(Math.floor((nowMs + HOUR_MS) / 1000) * 1000),
    });
  });

  it('rejects an expired token with TUN_ERR_TOKEN_EXPIRED', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const issuedMs = Date.UTC(2030, 0, 1);
    const token = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS, now: () => issuedMs });
    let nowMs = issuedMs + HOUR_MS - 1000;
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], now: () => nowMs });
    await expect(tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId: 'u1' });
    nowMs = issuedMs + HOUR_MS;
    await expect(tokenVerifier.verify(token)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_EXPIRED' });
  });

  it('rejects a token signed by another key under a trusted key id with TUN_ERR_TOKEN_INVALID', async () => {
    const trusted = keyPair();
    const attacker = keyPair();
    const genuine = await createToken({
      privateKeyPem: trusted.privateKeyPem,
      clusterId: 'u1',
      ttlMs: HOUR_MS,
    });
    const forged = await signRaw(decodeProtectedHeader(genuine), decodeJwt(genuine), attacker.privateKeyPem);
    const tokenVerifier = verifier({ publicKeyPems: [trusted.publicKeyPem] });
    await expect(tokenVerifier.verify(forged)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID' });
    // A genuine signature over a different payload.
    const [header, , signature] = genuine.split('.');
    const otherCluster = Buffer.from(
      JSON.stringify({ ...decodeJwt(genuine), cluster: 'u2', sub: 'cluster:u2' }),
    ).toString('base64url');
    await expect(tokenVerifier.verify(`${header}.${otherCluster}.${signature}`)).rejects.toMatchObject({
      code: 'TUN_ERR_TOKEN_INVALID',
    });
  });

  it('picks the key by kid, so tokens from the old and the new key both verify during a rotation', async () => {
    const oldKey = keyPair();
    const newKey = keyPair();
    const tokenVerifier = verifier({ publicKeyPems: [oldKey.publicKeyPem, newKey.publicKeyPem] });
    const oldToken = await createToken({
      privateKeyPem: oldKey.privateKeyPem,
      clusterId: 'u1',
      ttlMs: HOUR_MS,
    });
    const newToken = await createToken({
      privateKeyPem: newKey.privateKeyPem,
      clusterId: 'u2',
      ttlMs: HOUR_MS,
    });
    expect(decodeProtectedHeader(oldToken).kid).not.toBe(decodeProtectedHeader(newToken).kid);
    await expect(tokenVerifier.verify(oldToken)).resolves.toMatchObject({ clusterId: 'u1' });
    await expect(tokenVerifier.verify(newToken)).resolves.toMatchObject({ clusterId: 'u2' });
    // After the rotation completes, only the new key is trusted.
    const afterRotation = verifier({ publicKeyPems: [newKey.publicKeyPem] });
    await expect(afterRotation.verify(oldToken)).rejects.toMatchObject({ code: 'TUN_ERR_UNKNOWN_KEY' });
    await expect(afterRotation.verify(newToken)).resolves.toMatchObject({ clusterId: 'u2' });
  });

  it('rejects a token whose kid it does not know with TUN_ERR_UNKNOWN_KEY', async () => {
    const trusted = keyPair();
    const stranger = keyPair();
    const token = await createToken({
      privateKeyPem: stranger.privateKeyPem,
      clusterId: 'u1',
      ttlMs: HOUR_MS,
    });
    await expect(verifier({ publicKeyPems: [trusted.publicKeyPem] }).verify(token)).rejects.toMatchObject({
      code: 'TUN_ERR_UNKNOWN_KEY',
    });
  });

  it('rejects alg none and HS256 (keyed with the public key) with TUN_ERR_TOKEN_INVALID', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const genuine = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS });
    const { kid } = decodeProtectedHeader(genuine);
    const claims = decodeJwt(genuine);
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem] });
    await expect(
      tokenVerifier.verify(unsignedToken({ alg: 'none', kid, typ: 'JWT' }, claims)),
    ).rejects.toMatchObject({
      code: 'TUN_ERR_TOKEN_INVALID',
    });
    const hs256 = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256', kid, typ: 'JWT' })
      .sign(new TextEncoder().encode(publicKeyPem));
    await expect(tokenVerifier.verify(hs256)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID' });
  });

  it.each([
    ['a cluster id that breaks the pattern', { cluster: 'U1!', sub: 'cluster:U1!' }],
    ['a subject for another cluster', { sub: 'cluster:u2' }],
    ['no cluster claim', { cluster: undefined }],
    ['no token id', { jti: undefined }],
    ['another issuer', { iss: 'someone-else' }],
  ])('rejects a correctly signed token with %s as TUN_ERR_TOKEN_INVALID', async (_, change) => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const genuine = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS });
    const tampered = await signRaw(
      decodeProtectedHeader(genuine),
      { ...decodeJwt(genuine), ...change },
      privateKeyPem,
    );
    await expect(verifier({ publicKeyPems: [publicKeyPem] }).verify(tampered)).rejects.toMatchObject({
      code: 'TUN_ERR_TOKEN_INVALID',
    });
  });

  it.each([
    ['an empty string', ''],
    ['a word', 'not-a-jwt'],
    ['three dots of junk', 'a.b.c'],
    ['5000 characters', 'x'.repeat(5000)],
  ])('rejects a malformed token (%s) as TUN_ERR_TOKEN_INVALID', async (_, token) => {
    const { publicKeyPem } = keyPair();
    await expect(verifier({ publicKeyPems: [publicKeyPem] }).verify(token)).rejects.toMatchObject({
      code: 'TUN_ERR_TOKEN_INVALID',
    });
  });
});

describe('TokenVerifier revocation', () => {
  it('notices a revocation file that appears, is rewritten in place, and is replaced by rename', async () => {
    const dir = await tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const { privateKeyPem, publicKeyPem } = keyPair();
    const first = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS });
    const second = await createToken({ privateKeyPem, clusterId: 'u2', ttlMs: HOUR_MS });
    const tokenVerifier = verifier({
      publicKeyPems: [publicKeyPem],
      revocationFile,
      revocationCheckIntervalMs: 100,
    });
    const firstId = decodeJwt(first).jti as string;
    const secondId = decodeJwt(second).jti as string;

    // The file does not exist yet: nothing is revoked.
    await expect(tokenVerifier.verify(first)).resolves.toMatchObject({ clusterId: 'u1' });

    await writeFile(revocationFile, `# revoked by the operator\n${firstId}  # leaked in a CI log\n\n`);
    await expect
      .poll(() => tokenVerifier.verify(first).catch((err: { code: string }) => err.code), { timeout: 1_000 })
      .toBe('TUN_ERR_TOKEN_REVOKED');
    await expect(tokenVerifier.verify(second)).resolves.toMatchObject({ clusterId: 'u2' });

    // Atomic replacement: write elsewhere, rename over it.
    const replacement = join(dir, 'revoked-tokens.new');
    await writeFile(replacement, `${secondId}\n`);
    await rename(replacement, revocationFile);
    await expect
      .poll(() => tokenVerifier.verify(second).catch((err: { code: string }) => err.code), { timeout: 1_000 })
      .toBe('TUN_ERR_TOKEN_REVOKED');
    await expect(tokenVerifier.verify(first)).resolves.toMatchObject({ clusterId: 'u1' });

    // Removing the file un-revokes everything.
    await unlink(revocationFile);
    await expect
      .poll(() => tokenVerifier.verify(second).then((v) => v.clusterId), { timeout: 1_000 })
      .toBe('u2');
  });

  it('sees a same-size in-place rewrite within about a second with the default interval', async () => {
    const dir = await tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS });
    const tokenId = decodeJwt(token).jti as string;
    const decoy = 'z'.repeat(tokenId.length);
    await writeFile(revocationFile, `${decoy}\n`);
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], revocationFile });
    await expect(tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId: 'u1' });
    await writeFile(revocationFile, `${tokenId}\n`);
    const changedMs = Date.now();
    await expect
      .poll(() => tokenVerifier.verify(token).catch((err: { code: string }) => err.code), { timeout: 1_500 })
      .toBe('TUN_ERR_TOKEN_REVOKED');
    expect(Date.now() - changedMs).toBeLessThan(1_200);
  });

  it('checks revocation only after the signature, and fails closed when the file cannot be read', async () => {
    const dir = await tempDir();
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS });
    const forged = await signRaw(decodeProtectedHeader(token), decodeJwt(token), keyPair().privateKeyPem);
    // A directory where the file should be: stat works, reading fails.
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], revocationFile: dir });
    await expect(tokenVerifier.verify(forged)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID' });
    await expect(tokenVerifier.verify(token)).rejects.toMatchObject({
      code: 'TUN_ERR_CONFIG',
      retryable: true,
    });
  });

  it('parses one token id per line with comments and blank lines', () => {
    expect(parseRevocations('# header\n\nabc\r\n  def  # why\n#ghi\njkl extra words\n')).toEqual(
      new Set(['abc', 'def', 'jkl']),
    );
  });

  it('refuses verification after close', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', ttlMs: HOUR_MS });
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem] });
    await tokenVerifier.close();
    await tokenVerifier.close();
    await expect(tokenVerifier.verify(token)).rejects.toMatchObject({ code: 'TUN_ERR_CONFIG' });
  });
});
