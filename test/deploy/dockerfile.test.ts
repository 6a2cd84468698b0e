// The image definition, checked without a Docker engine: the Dockerfile is parsed here (base
// images pinned, non-root numeric USER, production dependencies only in the runtime stage, both
// CLIs on PATH) and the build context is evaluated with the .dockerignore rules (nothing secret
// reaches it, everything the Dockerfile copies does). hadolint is not used: it is packaged
// neither for Debian nor on npm (only as PyPI wrappers that download the binary).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, test } from 'vitest';
import type { Instruction, Stage } from './dockerfile.js';
import { dockerignoreMatcher, parseDockerfile, parseInstructions, words } from './dockerfile.js';
import { REPO_DIR } from './kustomize.js';
import { IMAGE_WORKDIR } from './pod-sandbox.js';

const dockerfile = parseDockerfile(readFileSync(join(REPO_DIR, 'Dockerfile'), 'utf8'));
const ignored = dockerignoreMatcher(readFileSync(join(REPO_DIR, '.dockerignore'), 'utf8'));
const runtime = dockerfile.stages[dockerfile.stages.length - 1] as Stage;

/** Files that must never be in an image: generated CA and keys, private keys, env files, tokens. */
const SECRET_PATH = /(^|\/)(\.tunnel(\/|$)|\.env(\.|$)|[^/]*\.(key|pem|token)$)/;

interface Workspace {
  dir: string;
  bin: Record<string, string>;
}

function workspaces(): Workspace[] {
  const root = JSON.parse(readFileSync(join(REPO_DIR, 'package.json'), 'utf8')) as { workspaces: string[] };
  return root.workspaces.map((dir) => {
    const pkg = JSON.parse(readFileSync(join(REPO_DIR, dir, 'package.json'), 'utf8')) as {
      bin?: Record<string, string>;
    };
    return { dir, bin: pkg.bin ?? {} };
  });
}

function filesIn(path: string): string[] {
  const abs = join(REPO_DIR, path);
  if (!statSync(abs).isDirectory()) return [path];
  return readdirSync(abs, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => relative(REPO_DIR, join(e.parentPath, e.name)));
}

/** COPY/ADD sources taken from the build context (not --from another stage). */
function contextSources(): { ins: Instruction; source: string }[] {
  return dockerfile.stages.flatMap((s) =>
    s.instructions
      .filter((i) => (i.keyword === 'COPY' || i.keyword === 'ADD') && i.flags.from === undefined)
      .flatMap((ins) =>
        words(ins.args)
          .slice(0, -1)
          .map((source) => ({ ins, source })),
      ),
  );
}

function lastOf(stage: Stage, keyword: string): Instruction | undefined {
  return stage.instructions.filter((i) => i.keyword === keyword).at(-1);
}

describe('the Dockerfile reader', () => {
  test('joins continuation lines, drops comment lines inside them and reads leading flags', () => {
    const ins = parseInstructions(
      'FROM a:1 AS b\n# note\nRUN one \\\n  # inside\n  two\nCOPY --from=b --chown=1:1 /x /y\n',
    );
    expect(ins.map((i) => [i.keyword, i.args, i.line])).toEqual([
      ['FROM', 'a:1 AS b', 1],
      ['RUN', 'one two', 3],
      ['COPY', '/x /y', 6],
    ]);
    expect(ins[2]?.flags).toEqual({ from: 'b', chown: '1:1' });
  });

  test('substitutes global ARG defaults into FROM', () => {
    const df = parseDockerfile('ARG V=20.1\nFROM node:${V}-slim AS build\nFROM node:$V\n');
    expect(df.stages.map((s) => s.image)).toEqual(['node:20.1-slim', 'node:20.1']);
  });

  test('evaluates .dockerignore with the last matching rule winning, parents included', () => {
    const m = dockerignoreMatcher('**\n!src/**\n**/*.key\n');
    expect([m('src/a.ts'), m('src/deep/b.key'), m('README.md'), m('.tunnel/ca.key')]).toEqual([
      false,
      true,
      true,
      true,
    ]);
  });
});

describe('Dockerfile', () => {
  test('is multi-stage and pins every base image to a specific tag, never latest', () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    const stageNames = new Set<string>();
    for (const stage of dockerfile.stages) {
      const image = stage.image;
      if (!stageNames.has(image.toLowerCase())) {
        expect(image, `line ${stage.from.line}`).not.toContain('$');
        const ref = image.split('@')[0] as string;
        const tag = ref.slice(ref.lastIndexOf('/') + 1).split(':')[1];
        expect(tag, `line ${stage.from.line}: ${image} needs a tag`).toBeDefined();
        expect(tag, `line ${stage.from.line}`).not.toBe('latest');
        // A full version (20.20.2), not a moving major tag (20, lts).
        expect(tag, `line ${stage.from.line}`).toMatch(/^\d+\.\d+\.\d+/);
      }
      if (stage.name !== undefined) stageNames.add(stage.name);
    }
  });

  test('builds with Node 20 and runs on a slim or distroless Node 20 base', () => {
    for (const stage of dockerfile.stages) {
      expect(stage.image).toMatch(
        /^(node:20\.[\d.]+-(bookworm|bullseye|trixie)-slim|gcr\.io\/distroless\/nodejs20-debian\d+:)/,
      );
    }
  });

  test('runs the final stage as a numeric non-root user', () => {
    const user = lastOf(runtime, 'USER');
    expect(user, 'the final stage sets USER').toBeDefined();
    const uid = user?.args.trim().split(':')[0] as string;
    expect(uid).toMatch(/^\d+$/);
    expect(Number(uid)).toBeGreaterThan(0);
    // The pods set the same uid, so file permissions and runAsNonRoot agree with the image.
    const pods = readFileSync(join(REPO_DIR, 'deploy/server/base/deployment.yaml'), 'utf8');
    expect(pods).toContain(`runAsUser: ${uid}`);
  });

  test('installs production dependencies only in the runtime stage', () => {
    const runs = runtime.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    expect(runs.some((r) => /\bnpm ci\b[^&;]*--omit[= ]dev\b/.test(r))).toBe(true);
    for (const r of runs) {
      expect(r).not.toMatch(/\bnpm (ci|install|i)\b(?![^&;]*--omit[= ]dev)/);
      expect(r).not.toMatch(/\bnpm run build\b|\btsc\b/);
    }
  });

  test('copies no secret-looking path and has no ADD (remote URLs, archives)', () => {
    expect(dockerfile.stages.flatMap((s) => s.instructions).filter((i) => i.keyword === 'ADD')).toEqual([]);
    const all = dockerfile.stages.flatMap((s) => s.instructions.filter((i) => i.keyword === 'COPY'));
    for (const ins of all) {
      for (const source of words(ins.args).slice(0, -1))
        expect(source, `line ${ins.line}`).not.toMatch(SECRET_PATH);
    }
  });

  test('declares no ENV or ARG that looks like a credential', () => {
    const vars = dockerfile.stages
      .flatMap((s) => s.instructions)
      .filter((i) => i.keyword === 'ENV' || i.keyword === 'ARG');
    for (const ins of vars)
      expect(ins.args, `line ${ins.line}`).not.toMatch(/(TOKEN|SECRET|PASSWORD|PRIVATE|API_KEY)\w*\s*=/i);
  });

  test('every path copied from the context exists and gets through .dockerignore, and no secret does', () => {
    const sources = contextSources();
    expect(sources.length).toBeGreaterThan(0);
    for (const { ins, source } of sources) {
      expect(existsSync(join(REPO_DIR, source)), `line ${ins.line}: ${source} exists`).toBe(true);
      const sent = filesIn(source).filter((f) => !ignored(f));
      expect(sent.length, `line ${ins.line}: ${source} is in the build context`).toBeGreaterThan(0);
      expect(
        sent.filter((f) => SECRET_PATH.test(f)),
        `line ${ins.line}`,
      ).toEqual([]);
    }
  });

  test('.dockerignore keeps generated keys, env files, node_modules and dist out of the context', () => {
    for (const path of [
      '.tunnel/ca.key',
      '.tunnel/token-signing.key',
      'packages/server/.tunnel/server.key',
      'packages/server/src/leftover.key',
      'packages/client/src/dev.pem',
      '.env',
      '.env.production',
      'node_modules/ws/index.js',
      'packages/server/dist/bin.js',
      'agent-u1.token',
    ]) {
      expect(ignored(path), path).toBe(true);
    }
  });

  test('carries every workspace, so both CLIs are in the image and on PATH', () => {
    const copiedFromBuild = runtime.instructions
      .filter((i) => i.keyword === 'COPY' && i.flags.from !== undefined)
      .map((i) => words(i.args)[0]);
    const copiedFromContext = runtime.instructions
      .filter((i) => i.keyword === 'COPY' && i.flags.from === undefined)
      .flatMap((i) => words(i.args).slice(0, -1));
    const bins = new Set<string>();
    for (const ws of workspaces()) {
      expect(copiedFromContext, `${ws.dir}/package.json`).toContain(`${ws.dir}/package.json`);
      expect(
        copiedFromBuild.some((src) => src?.endsWith(`/${ws.dir}/dist`)),
        `${ws.dir}/dist`,
      ).toBe(true);
      for (const [name, file] of Object.entries(ws.bin)) {
        bins.add(name);
        // The bin is a committed file that loads dist: its folder must be in the image too.
        const folder = `${ws.dir}/${file.split('/')[0]}`;
        expect(file.startsWith('dist/') || copiedFromContext.includes(folder), folder).toBe(true);
      }
    }
    expect([...bins].sort()).toEqual(['tunnel-client', 'tunnel-server']);
    // The manifests run `command: [tunnel-server]`: npm links workspace bins into node_modules/.bin.
    expect(lastOf(runtime, 'WORKDIR')?.args.trim()).toBe(IMAGE_WORKDIR);
    const env = runtime.instructions
      .filter((i) => i.keyword === 'ENV')
      .map((i) => i.args)
      .join(' ');
    expect(env).toMatch(new RegExp(`PATH=${IMAGE_WORKDIR}/node_modules/\\.bin:`));
  });
});
