import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { appendFile, mkdir, readFile, rename, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SignJWT, decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import { describe, expect, it, onTestFinished } from 'vitest';
import { keyIdOf } from '../../packages/server/src/token-format.js';
import {
  SIGNING_KEY_FILES,
  createToken,
  loadOrCreateSigningKeyPair,
} from '../../packages/server/src/token-issuer.js';
import { TokenVerifier, parseRevocations } from '../../packages/server/src/token-verifier.js';
import type { TokenVerifierOptions } from '../../packages/server/src/token-verifier.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { flushIo, pollUntil } from '../helpers/streams.js';
import { SERVER_BIN } from '../helpers/tunnel.js';
import { tempDir } from '../helpers/temp-dir.js';

const execFileAsync = promisify(execFile);

const HOUR_MS = 3_600_000;
/** The server's default domain, as every token here is minted for. */
const AUDIENCE = 'proxy.localhost';

function keyPair(): { privateKeyPem: string; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
  };
}

/** A verifier for AUDIENCE unless told otherwise, closed when the test finishes. */
function verifier(options: Omit<TokenVerifierOptions, 'audience'> & { audience?: string }): TokenVerifier {
  const tokenVerifier = new TokenVerifier({ audience: AUDIENCE, ...options });
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

/** The error `promise` rejects with; fails the test if it resolves. */
async function refusal(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  return promise.then(
    () => expect.fail('expected a refusal'),
    (err: { code: string; message: string }) => err,
  );
}

function unsignedToken(
  header: Record<string, unknown>,
  payload: Record<string, unknown>,
  signature = '',
): string {
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${encode(header)}.${encode(payload)}.${signature}`;
}

describe('loadOrCreateSigningKeyPair', () => {
  it('writes a private key readable only by the owner and its public key, once', async () => {
    const dir = tempDir();
    const first = await loadOrCreateSigningKeyPair(dir);
    expect(first.created).toBe(true);
    expect((await stat(join(dir, SIGNING_KEY_FILES.privateKey))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(dir, SIGNING_KEY_FILES.publicKey), 'utf8')).toBe(first.publicKeyPem);
    const second = await loadOrCreateSigningKeyPair(dir);
    expect(second).toEqual({ ...first, created: false });
  });

  it('derives a missing public key file from the private key', async () => {
    const dir = tempDir();
    const first = await loadOrCreateSigningKeyPair(dir);
    await unlink(join(dir, SIGNING_KEY_FILES.publicKey));
    const second = await loadOrCreateSigningKeyPair(dir);
    expect(second.publicKeyPem).toBe(first.publicKeyPem);
    expect(second.keyId).toBe(first.keyId);
  });

  it('refuses to replace a private key that is missing while its public key exists', async () => {
    const dir = tempDir();
    await loadOrCreateSigningKeyPair(dir);
    await unlink(join(dir, SIGNING_KEY_FILES.privateKey));
    await expect(loadOrCreateSigningKeyPair(dir)).rejects.toMatchObject({ code: 'TUN_ERR_CONFIG' });
  });
});

describe('createToken', () => {
  it('issues an EdDSA JWT with the documented claims and key id', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const nowMs = Date.UTC(2030, 0, 1);
    const token = await createToken({
      privateKeyPem,
      clusterId: 'u1',
      audience: AUDIENCE,
      ttlMs: HOUR_MS,
      now: () => nowMs,
    });
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
    // Exactly these claims: a new one is a wire change and belongs in this test.
    expect(claims).toEqual({
      iss: 'cluster-tunnel',
      sub: 'cluster:u1',
      aud: 'proxy.localhost',
      cluster: 'u1',
      jti: expect.any(String),
      iat: nowMs / 1000,
      exp: (nowMs + HOUR_MS) / 1000,
    });
    expect(claims.jti).toMatch(/^[A-Za-z0-9_-]{16,}$/);
    const other = await createToken({
      privateKeyPem,
      clusterId: 'u1',
      audience: AUDIENCE,
      ttlMs: HOUR_MS,
      now: () => nowMs,
    });
    expect(decodeJwt(other).jti).not.toBe(claims.jti);
  });

  it.each(['', 'U1', '-u1', 'u1-', 'u1-prod', 'u_1', 'a'.repeat(33), 'u1.x'])(
    'refuses the bad cluster id %j',
    async (clusterId) => {
      const { privateKeyPem } = keyPair();
      await expect(
        createToken({ privateKeyPem, clusterId, audience: AUDIENCE, ttlMs: HOUR_MS }),
      ).rejects.toMatchObject({
        code: 'TUN_ERR_CONFIG',
      });
    },
  );

  it.each(['', 'Proxy.Localhost', 'proxy.localhost.', 'proxy..localhost', 'not a domain', '10.0.0.1'])(
    'refuses the audience %j, which no server config spells its domain as',
    async (audience) => {
      const { privateKeyPem } = keyPair();
      await expect(createToken({ privateKeyPem, clusterId: 'u1', audience, ttlMs: HOUR_MS })).rejects.toThrow(
        expect.objectContaining({ code: 'TUN_ERR_CONFIG', message: expect.stringContaining('audience') }),
      );
    },
  );

  it('keeps exp - iat within the ttl when neither the clock nor the ttl is in whole seconds', async () => {
    const { privateKeyPem } = keyPair();
    const wholeSecondMs = Date.UTC(2030, 0, 1);
    for (const [nowMs, ttlMs, lifetimeSec] of [
      [wholeSecondMs + 999, 1500, 1],
      [wholeSecondMs + 999, HOUR_MS, 3600],
      [wholeSecondMs, HOUR_MS + 999, 3600],
    ] as const) {
      const claims = decodeJwt(
        await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs, now: () => nowMs }),
      );
      expect(claims.iat, `now ${nowMs}`).toBe(Math.floor(nowMs / 1000));
      expect(claims.exp! - claims.iat!, `ttl ${ttlMs}`).toBe(lifetimeSec);
      // Never outlives the ttl asked for.
      expect(claims.exp! * 1000).toBeLessThanOrEqual(nowMs + ttlMs);
    }
  });

  it('accepts the longest and shortest valid cluster ids', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem] });
    for (const clusterId of ['a', '0', 'a'.repeat(32), 'u1prodeu']) {
      const token = await createToken({ privateKeyPem, clusterId, audience: AUDIENCE, ttlMs: HOUR_MS });
      await expect(tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId });
    }
  });
});

describe('TokenVerifier', () => {
  it('accepts a valid token and reports its cluster, id and expiry', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const nowMs = Date.now();
    const token = await createToken({
      privateKeyPem,
      clusterId: 'u1',
      audience: AUDIENCE,
      ttlMs: HOUR_MS,
      now: () => nowMs,
    });
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
    const token = await createToken({
      privateKeyPem,
      clusterId: 'u1',
      audience: AUDIENCE,
      ttlMs: HOUR_MS,
      now: () => issuedMs,
    });
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
      audience: AUDIENCE,
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
      audience: AUDIENCE,
      ttlMs: HOUR_MS,
    });
    const newToken = await createToken({
      privateKeyPem: newKey.privateKeyPem,
      clusterId: 'u2',
      audience: AUDIENCE,
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
      audience: AUDIENCE,
      ttlMs: HOUR_MS,
    });
    await expect(verifier({ publicKeyPems: [trusted.publicKeyPem] }).verify(token)).rejects.toMatchObject({
      code: 'TUN_ERR_UNKNOWN_KEY',
    });
  });

  it('rejects alg none and HS256 (keyed with the public key) with TUN_ERR_TOKEN_INVALID', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const genuine = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
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
    const genuine = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
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

describe('TokenVerifier audience', () => {
  it('accepts a token for its own domain and refuses one for another, naming the domain it expects', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const mint = (audience: string) =>
      createToken({ privateKeyPem, clusterId: 'u1', audience, ttlMs: HOUR_MS });
    const production = await mint('tunnel.example.com');
    const staging = await mint('tunnel.staging.example.com');
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], audience: 'tunnel.example.com' });
    await expect(tokenVerifier.verify(production)).resolves.toMatchObject({ clusterId: 'u1' });
    const err = await refusal(tokenVerifier.verify(staging));
    expect(err.code).toBe('TUN_ERR_TOKEN_INVALID');
    expect(err.message).toMatch(/another audience.*"tunnel\.example\.com"/);
    expect(err.message).not.toContain(staging.split('.')[1]);
  });

  it('refuses a correctly signed token without an audience as TUN_ERR_TOKEN_INVALID', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const genuine = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
    const withoutAudience = await signRaw(
      decodeProtectedHeader(genuine),
      { ...decodeJwt(genuine), aud: undefined },
      privateKeyPem,
    );
    const err = await refusal(verifier({ publicKeyPems: [publicKeyPem] }).verify(withoutAudience));
    expect(err.code).toBe('TUN_ERR_TOKEN_INVALID');
    expect(err.message).toMatch(/has no audience.*"proxy\.localhost"/);
  });

  it('cannot be constructed without an audience', () => {
    const { publicKeyPem } = keyPair();
    for (const audience of ['', undefined]) {
      expect(
        () => new TokenVerifier({ publicKeyPems: [publicKeyPem], audience } as TokenVerifierOptions),
      ).toThrow(expect.objectContaining({ code: 'TUN_ERR_CONFIG' }));
    }
  });
});

describe('TokenVerifier issue time', () => {
  /** A whole second, so `iat` of a token minted now is exactly now. */
  const nowMs = Date.UTC(2030, 0, 1);

  async function issuedAt(
    iatSec: number,
    keys = keyPair(),
  ): Promise<{ token: string; publicKeyPem: string }> {
    const token = await signRaw(
      { kid: keyIdOf(createPublicKey(keys.publicKeyPem)), typ: 'JWT' },
      {
        iss: 'cluster-tunnel',
        sub: 'cluster:u1',
        aud: AUDIENCE,
        cluster: 'u1',
        jti: 'token-from-the-future',
        iat: iatSec,
        exp: iatSec + 3600,
      },
      keys.privateKeyPem,
    );
    return { token, publicKeyPem: keys.publicKeyPem };
  }

  it('refuses a token issued later than now plus the clock tolerance, which jose alone lets through', async () => {
    const { token, publicKeyPem } = await issuedAt(nowMs / 1000 + 2);
    const err = await refusal(verifier({ publicKeyPems: [publicKeyPem], now: () => nowMs }).verify(token));
    expect(err.code).toBe('TUN_ERR_TOKEN_INVALID');
    expect(err.message).toContain('issued in the future');
    // Why the check is ours: jose compares iat with the clock only under maxTokenAge.
    await expect(
      jwtVerify(token, createPublicKey(publicKeyPem), { currentDate: new Date(nowMs) }),
    ).resolves.toBeDefined();
  });

  it('accepts an iat at or just inside the tolerance and refuses one a millisecond beyond it', async () => {
    const keys = keyPair();
    const atEdge = await issuedAt(nowMs / 1000 + 5, keys);
    const inside = await issuedAt(nowMs / 1000 + 4, keys);
    const at = (ms: number) =>
      verifier({ publicKeyPems: [keys.publicKeyPem], clockToleranceMs: 5_000, now: () => ms });
    await expect(at(nowMs).verify(atEdge.token)).resolves.toMatchObject({ clusterId: 'u1' });
    await expect(at(nowMs - 1).verify(inside.token)).resolves.toMatchObject({ clusterId: 'u1' });
    const err = await refusal(at(nowMs - 1).verify(atEdge.token));
    expect(err).toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID', message: expect.stringContaining('future') });
  });

  it('accepts, without tolerance, a token minted a moment ago by a clock up to a second ahead', async () => {
    // iat is rounded down: minted at …999 ms by the issuer, it says …000, before this server's now.
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({
      privateKeyPem,
      clusterId: 'u1',
      audience: AUDIENCE,
      ttlMs: HOUR_MS,
      now: () => nowMs + 999,
    });
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], now: () => nowMs });
    await expect(tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId: 'u1' });
  });
});

describe('TokenVerifier lifetime cap', () => {
  const CAP_MS = 8760 * HOUR_MS;
  const wholeSecondMs = Date.UTC(2030, 0, 1);

  async function minted(ttlMs: number, nowMs = wholeSecondMs, keys = keyPair()) {
    const token = await createToken({
      privateKeyPem: keys.privateKeyPem,
      clusterId: 'u1',
      audience: AUDIENCE,
      ttlMs,
      now: () => nowMs,
    });
    return { token, publicKeyPem: keys.publicKeyPem };
  }

  it('accepts a token whose lifetime is exactly the cap, whatever millisecond it was minted at', async () => {
    const keys = keyPair();
    for (const offsetMs of [0, 1, 500, 999]) {
      const { token } = await minted(CAP_MS, wholeSecondMs + offsetMs, keys);
      const tokenVerifier = verifier({
        publicKeyPems: [keys.publicKeyPem],
        maxLifetimeMs: CAP_MS,
        now: () => wholeSecondMs + offsetMs,
      });
      await expect(tokenVerifier.verify(token), `minted at +${offsetMs} ms`).resolves.toMatchObject({
        clusterId: 'u1',
      });
    }
  });

  it('refuses a token one second over the cap as TUN_ERR_TOKEN_INVALID, naming the cap', async () => {
    const { token, publicKeyPem } = await minted(CAP_MS + 1000);
    const tokenVerifier = verifier({
      publicKeyPems: [publicKeyPem],
      maxLifetimeMs: CAP_MS,
      now: () => wholeSecondMs,
    });
    const err = await refusal(tokenVerifier.verify(token));
    expect(err.code).toBe('TUN_ERR_TOKEN_INVALID');
    expect(err.message).toContain('more than the 8760h this server allows');
  });

  it('caps the lifetime the token was issued with, not what remains of it', async () => {
    const { privateKeyPem, publicKeyPem } = keyPair();
    const genuine = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
    const nowSec = wholeSecondMs / 1000;
    // Ten years old, one minute left.
    const old = await signRaw(
      decodeProtectedHeader(genuine),
      { ...decodeJwt(genuine), iat: nowSec - 10 * 8760 * 3600, exp: nowSec + 60 },
      privateKeyPem,
    );
    const tokenVerifier = verifier({
      publicKeyPems: [publicKeyPem],
      maxLifetimeMs: CAP_MS,
      now: () => wholeSecondMs,
    });
    await expect(tokenVerifier.verify(old)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_INVALID' });
  });

  it('sets no cap when maxLifetimeMs is not given', async () => {
    const { token, publicKeyPem } = await minted(100 * CAP_MS);
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], now: () => wholeSecondMs });
    await expect(tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId: 'u1' });
  });

  it.each([0, 999, 1500.5, Number.NaN, Number.POSITIVE_INFINITY])(
    'refuses maxLifetimeMs %s as TUN_ERR_CONFIG',
    (maxLifetimeMs) => {
      const { publicKeyPem } = keyPair();
      expect(
        () => new TokenVerifier({ publicKeyPems: [publicKeyPem], audience: AUDIENCE, maxLifetimeMs }),
      ).toThrow(expect.objectContaining({ code: 'TUN_ERR_CONFIG' }));
    },
  );
});

describe('tunnel-server token create', () => {
  async function tokenCreate(...args: string[]): Promise<string> {
    const { stdout } = await execFileAsync(process.execPath, [SERVER_BIN, 'token', 'create', ...args]);
    return stdout.trim();
  }

  it('mints for proxy.localhost and 8760h by default, which a server capped at 8760h accepts', async () => {
    const dataDir = tempDir();
    const token = await tokenCreate('--cluster', 'u1', '--data-dir', dataDir);
    const claims = decodeJwt(token);
    expect(claims.aud).toBe('proxy.localhost');
    expect(claims.exp! - claims.iat!).toBe(8760 * 3600);
    const publicKeyPem = await readFile(join(dataDir, SIGNING_KEY_FILES.publicKey), 'utf8');
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], maxLifetimeMs: 8760 * HOUR_MS });
    await expect(tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId: 'u1' });
  });

  it("takes --domain, spelled as the server's config spells it, as the audience, and says so in --help", async () => {
    const dataDir = tempDir();
    const token = await tokenCreate(
      '--cluster',
      'u1',
      '--domain',
      'Tunnel.Example.COM.',
      '--data-dir',
      dataDir,
    );
    expect(decodeJwt(token).aud).toBe('tunnel.example.com');
    // Commander wraps help lines; read it as one line.
    const help = (await tokenCreate('--help')).replace(/\s+/g, ' ');
    const domainHelp = help.slice(help.indexOf('--domain <domain>'), help.indexOf('--ttl <duration>'));
    expect(domainHelp).toContain('audience');
    expect(domainHelp).toContain('(default: "proxy.localhost")');
  });

  it('refuses a --domain that is not a DNS name with the configuration exit code', async () => {
    const dataDir = tempDir();
    await expect(
      tokenCreate('--cluster', 'u1', '--domain', 'not a domain', '--data-dir', dataDir),
    ).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('--domain') });
  });
});

describe('TokenVerifier revocation watch', () => {
  const INTERVAL_MS = 500;

  /** A verifier whose watch runs on `clock`, watched; records every callback. */
  function watched(revocationFile: string | undefined, publicKeyPem = keyPair().publicKeyPem) {
    const clock = new ManualClock();
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem], revocationFile, timers: clock });
    const changes: string[][] = [];
    const errors: Array<{ code: string; retryable: boolean }> = [];
    tokenVerifier.watchRevocations(
      (revoked) => changes.push([...revoked].sort()),
      (err) => errors.push(err),
    );
    /** Runs the next check once it is armed, that is once the previous one has finished. */
    const tick = async (): Promise<void> => {
      await pollUntil(() => clock.pending === 1, 2_000, 'the next revocation check to be armed');
      clock.advance(INTERVAL_MS);
    };
    /** Waits until the check started by the last tick() has finished and armed the next one. */
    const settled = () => pollUntil(() => clock.pending === 1, 2_000, 'the revocation check to finish');
    const changed = (count: number) => pollUntil(() => changes.length === count, 2_000, `change #${count}`);
    return { clock, tokenVerifier, changes, errors, tick, settled, changed };
  }

  it('calls back with the whole set at once, then when the file is written, rewritten, appended to, replaced by rename and removed', async () => {
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
    const id = decodeJwt(token).jti as string;
    const w = watched(revocationFile, publicKeyPem);

    await w.changed(1);
    expect(w.changes[0]).toEqual([]); // the file does not exist yet

    await writeFile(revocationFile, `${id}\n`);
    await w.tick();
    await w.changed(2);
    expect(w.changes[1]).toEqual([id]);
    expect(w.tokenVerifier.isRevoked(id)).toBe(true);
    await expect(w.tokenVerifier.verify(token)).rejects.toMatchObject({ code: 'TUN_ERR_TOKEN_REVOKED' });

    await writeFile(revocationFile, `${id}\nbbb\n`);
    await w.tick();
    await w.changed(3);
    expect(w.changes[2]).toEqual([id, 'bbb'].sort());

    await appendFile(revocationFile, 'ccc  # appended\n');
    await w.tick();
    await w.changed(4);
    expect(w.changes[3]).toEqual([id, 'bbb', 'ccc'].sort());

    const replacement = join(dir, 'revoked-tokens.new');
    await writeFile(replacement, '# replaced\nccc\n');
    await rename(replacement, revocationFile);
    await w.tick();
    await w.changed(5);
    expect(w.changes[4]).toEqual(['ccc']);
    expect(w.tokenVerifier.isRevoked(id)).toBe(false);

    await unlink(revocationFile);
    await w.tick();
    await w.changed(6);
    expect(w.changes[5]).toEqual([]);
    expect(w.errors).toEqual([]);
  });

  it('stays quiet when the file changes but the set of token ids does not', async () => {
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    await writeFile(revocationFile, 'aaa\n');
    const w = watched(revocationFile);
    await w.changed(1);
    // Another size and mtime, so the file is read again; only comments and blank lines differ.
    await writeFile(revocationFile, '# the list\n\naaa  # leaked in a CI log\n');
    await w.tick();
    await w.settled();
    expect(w.changes).toEqual([['aaa']]);
  });

  it('stops on close(), even with a check in flight, and arms no further check', async () => {
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const w = watched(revocationFile);
    await w.changed(1);
    await writeFile(revocationFile, 'aaa\n');
    await w.tick(); // the check is now reading the file
    await w.tokenVerifier.close();
    expect(w.clock.pending).toBe(0);
    w.clock.advance(60_000);
    await flushIo();
    expect(w.changes).toEqual([[]]);
    expect(() => w.tokenVerifier.watchRevocations(() => {})).toThrow(
      expect.objectContaining({ code: 'TUN_ERR_CONFIG' }),
    );
  });

  it('clears the armed check on close()', async () => {
    const dir = tempDir();
    const w = watched(join(dir, 'revoked-tokens'));
    await w.changed(1);
    await w.settled();
    await w.tokenVerifier.close();
    expect(w.clock.pending).toBe(0);
  });

  it('reports a file that cannot be read once per run of failures, keeps the last set, and verify() fails closed', async () => {
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
    await writeFile(revocationFile, 'aaa\n');
    const w = watched(revocationFile, publicKeyPem);
    await w.changed(1);
    await expect(w.tokenVerifier.verify(token)).resolves.toMatchObject({ clusterId: 'u1' });

    // A directory where the file should be: stat works, reading fails.
    await unlink(revocationFile);
    await mkdir(revocationFile);
    await w.tick();
    await pollUntil(() => w.errors.length === 1, 2_000, 'the error callback');
    expect(w.errors[0]).toMatchObject({ code: 'TUN_ERR_CONFIG', retryable: true });
    expect(w.tokenVerifier.isRevoked('aaa')).toBe(true);
    await expect(w.tokenVerifier.verify(token)).rejects.toMatchObject({ code: 'TUN_ERR_CONFIG' });
    await w.tick();
    await w.settled();
    expect(w.errors).toHaveLength(1);

    // Readable again, then unreadable again: a new run of failures is reported again.
    await rmdir(revocationFile);
    await writeFile(revocationFile, 'bbb\n');
    await w.tick();
    await w.changed(2);
    expect(w.changes[1]).toEqual(['bbb']);
    await unlink(revocationFile);
    await mkdir(revocationFile);
    await w.tick();
    await pollUntil(() => w.errors.length === 2, 2_000, 'the second error callback');
    expect(w.changes).toHaveLength(2);
  });

  it('tells a watcher the empty set once when there is no revocation file, and arms no check', async () => {
    const w = watched(undefined);
    await w.changed(1);
    expect(w.changes).toEqual([[]]);
    expect(w.clock.pending).toBe(0);
  });

  it('tells a second watcher the current set without waiting for a change', async () => {
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    await writeFile(revocationFile, 'aaa\n');
    const w = watched(revocationFile);
    await w.changed(1);
    const later: string[][] = [];
    w.tokenVerifier.watchRevocations((revoked) => later.push([...revoked]));
    await pollUntil(() => later.length === 1, 2_000, 'the second watcher');
    expect(later).toEqual([['aaa']]);
  });

  it('sees a revocation within a second with the default interval and real timers', async () => {
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const tokenVerifier = verifier({ publicKeyPems: [keyPair().publicKeyPem], revocationFile });
    const changes: string[][] = [];
    tokenVerifier.watchRevocations((revoked) => changes.push([...revoked]));
    await pollUntil(() => changes.length === 1, 2_000, 'the first read');
    await writeFile(revocationFile, 'aaa\n');
    const writtenMs = Date.now();
    await pollUntil(() => changes.length === 2, 1_500, 'the revocation');
    expect(Date.now() - writtenMs).toBeLessThan(1_200);
    expect(changes[1]).toEqual(['aaa']);
  });
});

describe('TokenVerifier revocation', () => {
  it('notices a revocation file that appears, is rewritten in place, and is replaced by rename', async () => {
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const { privateKeyPem, publicKeyPem } = keyPair();
    const first = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
    const second = await createToken({ privateKeyPem, clusterId: 'u2', audience: AUDIENCE, ttlMs: HOUR_MS });
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
    const dir = tempDir();
    const revocationFile = join(dir, 'revoked-tokens');
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
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
    const dir = tempDir();
    const { privateKeyPem, publicKeyPem } = keyPair();
    const token = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
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
    const token = await createToken({ privateKeyPem, clusterId: 'u1', audience: AUDIENCE, ttlMs: HOUR_MS });
    const tokenVerifier = verifier({ publicKeyPems: [publicKeyPem] });
    await tokenVerifier.close();
    await tokenVerifier.close();
    await expect(tokenVerifier.verify(token)).rejects.toMatchObject({ code: 'TUN_ERR_CONFIG' });
  });
});
