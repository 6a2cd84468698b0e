/**
 * The htpasswd file of basic access: bcrypt only (as `htpasswd -B` writes it, checked against
 * the real tool in e2e/http-route.test.ts), every problem named at start, re-read on change
 * with the old users kept when the new file is bad, and the limits of SECURITY.md: the bcrypt
 * cost, checks in flight at once, the cache of passwords checked.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { describe, expect, onTestFinished, test } from 'vitest';
import { TunnelError } from '@cluster-tunnel/protocol';
import {
  Htpasswd,
  MAX_BCRYPT_COST,
  PASSWORD_CACHE_TTL_MS,
  basicCredentials,
  parseHtpasswd,
} from '../../packages/server/src/htpasswd.js';
import {
  MAX_PASSWORD_CHECKS_IN_FLIGHT,
  PasswordChecker,
} from '../../packages/server/src/password-checker.js';
import { tempDir } from '../helpers/temp-dir.js';

const ALICE = bcrypt.hashSync('correct horse', 5).replace(/^\$2b\$/, '$2y$');
const BOB = bcrypt.hashSync('battery staple', 4);

function events() {
  const seen: string[] = [];
  return {
    seen,
    onReloadFailed: (_file: string, reason: string) => seen.push(`failed: ${reason}`),
    onReloaded: (_file: string, users: number) => seen.push(`reloaded: ${users}`),
  };
}

function checker(): PasswordChecker {
  const c = new PasswordChecker();
  onTestFinished(() => c.close());
  return c;
}

function file(text: string): string {
  const path = join(tempDir(), 'htpasswd');
  writeFileSync(path, text);
  return path;
}

async function refusal(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TunnelError);
  return (err as TunnelError).code;
}

describe('parseHtpasswd', () => {
  test('reads user:bcrypt lines, skipping comments and blank lines', () => {
    const users = parseHtpasswd(`# team\nalice:${ALICE}\r\n\nbob:${BOB}\n`);
    expect(users).toEqual(
      new Map([
        ['alice', ALICE],
        ['bob', BOB],
      ]),
    );
  });

  test('names every problem by line, never echoing a hash', () => {
    const problems = parseHtpasswd(
      [
        'alice:$apr1$abc$0123456789abcdefghijkl', // MD5
        'bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=',
        'carol:plaintext',
        `dave:${bcrypt.hashSync('x', 4).replace('$04$', '$13$')}`,
        'no-colon',
        `erin:${BOB}`,
        `erin:${BOB}`,
      ].join('\n'),
    );
    expect(problems).toEqual([
      'line 1: user "alice": not a bcrypt hash (only bcrypt is accepted: htpasswd -B)',
      'line 2: user "bob": not a bcrypt hash (only bcrypt is accepted: htpasswd -B)',
      'line 3: user "carol": not a bcrypt hash (only bcrypt is accepted: htpasswd -B)',
      `line 4: user "dave": bcrypt cost 13 is outside 4..${MAX_BCRYPT_COST}`,
      'line 5: expected user:hash',
      'line 7: user "erin" is listed twice',
    ]);
    expect(JSON.stringify(problems)).not.toContain('W6ph5');
  });
});

describe('basicCredentials', () => {
  const header = (s: string) => `Basic ${Buffer.from(s).toString('base64')}`;
  test('splits at the first colon: passwords may hold colons', () => {
    expect(basicCredentials(header('alice:a:b'))).toEqual({ user: 'alice', password: 'a:b' });
    expect(basicCredentials(header('alice:'))).toEqual({ user: 'alice', password: '' });
  });
  test('anything else is no credentials', () => {
    for (const h of [
      undefined,
      '',
      'Bearer x',
      header(':pw'),
      header('nocolon'),
      'Basic !!!',
      `Basic ${'A'.repeat(5000)}`,
    ])
      expect(basicCredentials(h)).toBeUndefined();
  });
});

describe('Htpasswd', () => {
  test('a right password passes; a wrong one, an unknown user or an empty file do not', async () => {
    const h = await Htpasswd.load(file(`alice:${ALICE}\nbob:${BOB}\n`), checker(), events());
    expect(await h.verify('alice', 'correct horse')).toBe('alice');
    expect(await h.verify('bob', 'battery staple')).toBe('bob');
    expect(await refusal(h.verify('alice', 'battery staple'))).toBe('TUN_ERR_ACCESS_DENIED');
    expect(await refusal(h.verify('mallory', 'correct horse'))).toBe('TUN_ERR_ACCESS_DENIED');
    expect(await refusal(h.verify('alice', 'x'.repeat(2000)))).toBe('TUN_ERR_ACCESS_DENIED');
    const empty = await Htpasswd.load(file('# nobody yet\n'), checker(), events());
    expect(await refusal(empty.verify('alice', 'correct horse'))).toBe('TUN_ERR_ACCESS_DENIED');
  });

  test('a bad or missing file stops the start with every problem (TUN_ERR_CONFIG)', async () => {
    const err = await Htpasswd.load(file('alice:{SHA}x\nbob\n'), checker(), events()).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'TUN_ERR_CONFIG' });
    expect((err as Error).message).toMatch(/line 1: .*bcrypt.*; line 2: expected user:hash/);
    const missing = await Htpasswd.load(join(tempDir(), 'absent'), checker(), events()).catch(
      (e: unknown) => e,
    );
    expect(missing).toMatchObject({ code: 'TUN_ERR_CONFIG', message: expect.stringMatching(/ENOENT/) });
  });

  test('re-reads a changed file; a bad new file keeps the old users', async () => {
    let nowMs = 1_000_000;
    const e = events();
    const path = file(`alice:${ALICE}\n`);
    const h = await Htpasswd.load(path, checker(), e, () => nowMs);
    expect(await h.verify('alice', 'correct horse')).toBe('alice');
    writeFileSync(path, `bob:${BOB}\n`);
    // Within the check interval the file is not looked at again.
    expect(await h.verify('alice', 'correct horse')).toBe('alice');
    nowMs += 2000;
    expect(await refusal(h.verify('alice', 'correct horse'))).toBe('TUN_ERR_ACCESS_DENIED');
    expect(await h.verify('bob', 'battery staple')).toBe('bob');
    writeFileSync(path, 'bob:plaintext-now\n');
    nowMs += 2000;
    expect(await h.verify('bob', 'battery staple')).toBe('bob');
    expect(e.seen).toEqual([
      'reloaded: 1',
      expect.stringMatching(/^failed: line 1: user "bob": not a bcrypt hash/),
    ]);
  });

  test(`more than ${MAX_PASSWORD_CHECKS_IN_FLIGHT} checks at once: the rest are refused, retryable; a checked password needs no check`, async () => {
    let nowMs = 1_000_000;
    // Cost 12: each check outlasts the start of all the others by far.
    const h = await Htpasswd.load(
      file(`alice:${bcrypt.hashSync('slow', 12)}\n`),
      checker(),
      events(),
      () => nowMs,
    );
    expect(await h.verify('alice', 'slow')).toBe('alice');
    const results = Array.from({ length: MAX_PASSWORD_CHECKS_IN_FLIGHT + 2 }, (_, i) =>
      h.verify('alice', `wrong ${i}`).then(
        () => 'passed',
        (e: TunnelError) => e.code,
      ),
    );
    // While every check is taken, the password checked before still passes: it is cached.
    expect(await h.verify('alice', 'slow')).toBe('alice');
    const codes = await Promise.all(results);
    expect(codes.filter((r) => r === 'TUN_ERR_ACCESS_DENIED')).toHaveLength(MAX_PASSWORD_CHECKS_IN_FLIGHT);
    expect(codes.filter((r) => r === 'TUN_ERR_LIMIT_EXCEEDED')).toHaveLength(2);
    // Trusted no longer after its time: checked again (and refused while the checks are taken).
    nowMs += PASSWORD_CACHE_TTL_MS + 1;
    // (The file check this time is due now: let one check make it, so the next ones start in order.)
    await h.verify('nobody', 'x').catch(() => undefined);
    const busy = Array.from({ length: MAX_PASSWORD_CHECKS_IN_FLIGHT }, () =>
      h.verify('alice', 'wrong').catch(() => 'denied'),
    );
    expect(await refusal(h.verify('alice', 'slow'))).toBe('TUN_ERR_LIMIT_EXCEEDED');
    await Promise.all(busy);
    expect(await h.verify('alice', 'slow')).toBe('alice');
  });
});
