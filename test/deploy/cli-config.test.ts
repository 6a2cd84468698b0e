// The flags and env the manifests pass to the CLIs are ones the CLIs accept: each container that
// runs tunnel-server or tunnel-client is rebuilt in a sandbox (pod-sandbox.ts: mounts as temp
// directories, fieldRefs as a pod would see them), then resolved by the real config resolver from
// the sources and, once built, by the real CLI's --check-config. The resolved values are then held
// against the pod: probe ports, Service ports, writable data directory, Secret-backed files, grace
// period against the drain timeout, egress rules against the server or the proxy.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { redactConfig } from '@cluster-tunnel/config';
import type { ConfigSchema, HostPort } from '@cluster-tunnel/config';
import type { ClientConfig } from '../../packages/client/src/config.js';
import {
  CLIENT_CONFIG_SCHEMA,
  NO_PROXY_ENV,
  PROXY_ENV,
  resolveClientConfig,
} from '../../packages/client/src/config.js';
import type { ServerConfig } from '../../packages/server/src/config.js';
import { SERVER_CONFIG_SCHEMA, resolveServerConfig } from '../../packages/server/src/config.js';
import type { Container, K8sObject, PodTemplate } from './kustomize.js';
import {
  REPO_DIR,
  listKustomizations,
  podTemplates,
  render,
  resolvePort,
  selectorMatches,
} from './kustomize.js';
import type { ContainerView, VolumeKind } from './pod-sandbox.js';
import { buildContainerView, podPathOf } from './pod-sandbox.js';
import type { EgressRule } from './pod-rules.js';
import { egressRules } from './pod-rules.js';
import { createTempDir } from '../helpers/temp-dir.js';

type Cli = 'tunnel-server' | 'tunnel-client';

/** The file package.json `bin` names for a CLI: what npm links into node_modules/.bin in the image. */
function declaredBin(pkg: string, name: string): string {
  const manifest = JSON.parse(readFileSync(join(REPO_DIR, pkg, 'package.json'), 'utf8')) as {
    bin?: Record<string, string>;
  };
  const bin = manifest.bin?.[name];
  if (bin === undefined) throw new Error(`${pkg}/package.json does not declare the ${name} bin`);
  return join(pkg, bin);
}

interface CliInfo {
  pkg: string;
  /** The installed entry (package.json bin: a committed file that loads dist), relative to the repository. */
  dist: string;
  /** What the entry loads: the build, which `npm test` makes first. */
  build: string;
  schema: ConfigSchema;
  /** Variables the CLI reads besides its schema's. */
  extraEnv: readonly string[];
}

const CLIS: Record<Cli, CliInfo> = {
  'tunnel-server': {
    pkg: 'packages/server',
    dist: declaredBin('packages/server', 'tunnel-server'),
    build: 'packages/server/dist/bin.js',
    schema: SERVER_CONFIG_SCHEMA,
    extraEnv: [],
  },
  'tunnel-client': {
    pkg: 'packages/client',
    dist: declaredBin('packages/client', 'tunnel-client'),
    build: 'packages/client/dist/bin.js',
    schema: CLIENT_CONFIG_SCHEMA,
    extraEnv: [...PROXY_ENV, ...NO_PROXY_ENV],
  },
};

/** Keys whose --check-config output must equal the source resolver's (the rest is computed alike). */
const COMPARED_KEYS: Record<Cli, string[]> = {
  'tunnel-server': [
    'configFile',
    'listen',
    'domain',
    'dataDir',
    'tlsCert',
    'tlsKey',
    'tokenPublicKey',
    'revokedFile',
    'adminListen',
    'serverId',
    'serverCount',
    'drainTimeoutMs',
  ],
  'tunnel-client': ['server', 'tokenFile', 'caFile', 'route', 'agentId', 'healthListen', 'drainTimeoutMs'],
};

// The pods' sandboxes are made while the cases are generated, before any test runs: one
// directory holds them all, removed after the file's last test.
const sandboxes = createTempDir('tunnel-pods-');
afterAll(() => sandboxes.remove());
let sandboxCount = 0;

interface Subject {
  dir: string;
  objects: K8sObject[];
  template: PodTemplate;
  container: Container;
  cli: Cli;
  view: ContainerView;
}

const subjectCache = new Map<string, Subject[]>();

/** Every container in a rendered kustomization whose command is one of the CLIs (built once per dir). */
function subjects(dir: string): Subject[] {
  const cached = subjectCache.get(dir);
  if (cached !== undefined) return cached;
  const objects = render(dir);
  const out: Subject[] = [];
  for (const template of podTemplates(objects)) {
    for (const container of template.spec.containers ?? []) {
      const cli = container.command?.[0] as Cli;
      if (!(cli in CLIS))
        throw new Error(
          `${template.name}/${container.name}: command ${container.command} is not a CLI of the image`,
        );
      const root = join(sandboxes.path, String(sandboxCount++));
      mkdirSync(root);
      out.push({
        dir,
        objects,
        template,
        container,
        cli,
        view: buildContainerView(objects, template, container, root),
      });
    }
  }
  subjectCache.set(dir, out);
  return out;
}

function resolve(s: Subject): ServerConfig | ClientConfig {
  const input = { env: s.view.env, cwd: s.view.cwd, hostname: s.view.podName };
  if (s.cli === 'tunnel-server') {
    if (s.view.argv[0] !== 'start')
      throw new Error(`tunnel-server needs the start command first, got ${s.view.argv[0]}`);
    return resolveServerConfig({ ...input, argv: s.view.argv.slice(1) });
  }
  return resolveClientConfig({ ...input, argv: s.view.argv });
}

/** Resolves, turning TUN_ERR_CONFIG into a readable failure with every problem listed. */
function resolveOrExplain(s: Subject): ServerConfig | ClientConfig {
  try {
    return resolve(s);
  } catch (err) {
    const e = err as { message: string; details?: { problems?: string[] } };
    throw new Error(`${s.template.name}: ${e.message}\n${(e.details?.problems ?? []).join('\n')}`, {
      cause: err,
    });
  }
}

const isWildcard = (hp: HostPort | undefined): boolean =>
  hp !== undefined && ['0.0.0.0', '::', '[::]'].includes(hp.host);

function probePorts(c: Container): (number | undefined)[] {
  return [c.livenessProbe, c.readinessProbe].map((p: K8sObject | undefined) =>
    resolvePort(c, p?.httpGet?.port),
  );
}

/** What the kubelet allows between SIGTERM and SIGKILL, less the preStop hook's sleep. */
function drainBudgetMs(s: Subject): number {
  const grace = (s.template.spec.terminationGracePeriodSeconds ?? 30) * 1000;
  const preStopSleep = (s.container.lifecycle?.preStop?.sleep?.seconds ?? 0) * 1000;
  return grace - preStopSleep;
}

/** The server's drain delay (not ready, still serving) plus its drain timeout; the agent's timeout. */
function drainMs(config: ServerConfig | ClientConfig): number {
  return ('drainDelayMs' in config ? config.drainDelayMs : 0) + config.drainTimeoutMs;
}

function mountKind(s: Subject, localPath: string | undefined): VolumeKind | 'none' {
  if (localPath === undefined) return 'none';
  return s.view.mountOf(localPath)?.kind ?? 'none';
}

const kustomizationDirs = listKustomizations()
  .filter((k) => k.kind === 'Kustomization')
  .map((k) => k.dir);

test.each(Object.keys(CLIS) as Cli[])(
  '%s can be run by name: its bin file starts with a node shebang',
  (cli) => {
    // The manifests run `command: [tunnel-server]`; npm's link in node_modules/.bin execs the file.
    expect(readFileSync(join(REPO_DIR, CLIS[cli].dist), 'utf8').split('\n')[0]).toBe('#!/usr/bin/env node');
  },
);

test('every container in deploy/ runs one of the CLIs the image carries', () => {
  const clis = kustomizationDirs.flatMap((d) => subjects(d).map((s) => s.cli));
  expect(new Set(clis)).toEqual(new Set(['tunnel-server', 'tunnel-client']));
});

/** Every container that runs a CLI, in every kustomization: each is a case of its own. */
const allSubjects = kustomizationDirs.flatMap((dir) => subjects(dir));
const servers = allSubjects.filter((s) => s.cli === 'tunnel-server');
const agents = allSubjects.filter((s) => s.cli === 'tunnel-client');
// The bases leave the egress rule for the server or the proxy to their overlays.
const hasEgressRule = (s: Subject): boolean => s.cli === 'tunnel-client' && !s.dir.endsWith('/base');

test('deploy/ has servers, agents and agent overlays with egress rules to check', () => {
  expect(servers.length).toBeGreaterThan(0);
  expect(agents.length).toBeGreaterThan(0);
  expect(agents.filter(hasEgressRule).length).toBeGreaterThan(0);
});

// Only the cases a subject has something for are generated: server checks for servers, agent
// checks for agents, the egress check for agents outside the bases.
for (const s of allSubjects)
  describe(`${s.dir}: ${s.template.name}/${s.container.name}`, () => {
    const where = (p: string | undefined) => `${p === undefined ? 'unset' : podPathOf(s.view, p)}`;

    test('sets only environment variables the CLI reads', () => {
      const known = new Set([
        ...Object.values(CLIS[s.cli].schema).map((spec) => spec.env),
        ...CLIS[s.cli].extraEnv,
      ]);
      expect(s.view.manifestEnvNames.filter((n) => !known.has(n))).toEqual([]);
    });

    test('passes flags and env that the config resolver from the sources accepts', () => {
      expect(() => resolveOrExplain(s)).not.toThrow();
    });

    test(`passes flags and env that the built ${s.cli} --check-config accepts, resolving them alike`, () => {
      // npm test builds first: a missing build is a failure, never a skip.
      expect(existsSync(join(REPO_DIR, CLIS[s.cli].build)), `${CLIS[s.cli].build}: run npm run build`).toBe(
        true,
      );
      const result = spawnSync(
        process.execPath,
        [join(REPO_DIR, CLIS[s.cli].dist), ...s.view.argv, '--check-config'],
        {
          cwd: s.view.cwd,
          // The pod's environment, plus what the image's ENV sets.
          env: { ...s.view.env, NODE_ENV: 'production', PATH: process.env.PATH ?? '' },
          encoding: 'utf8',
          timeout: 30_000,
        },
      );
      expect(result.status, result.stderr).toBe(0);
      const printed = JSON.parse(result.stdout) as Record<string, unknown>;
      const expected = JSON.parse(JSON.stringify(redactConfig(resolve(s), CLIS[s.cli].schema))) as Record<
        string,
        unknown
      >;
      // JSON has no undefined: a CLI may print an unset key as null or leave it out.
      const pick = (o: Record<string, unknown>) =>
        Object.fromEntries(COMPARED_KEYS[s.cli].map((k) => [k, o[k] ?? null]));
      expect(pick(printed)).toEqual(pick(expected));
    });

    test('the health port is on all interfaces and is the one both probes use', () => {
      const config = resolveOrExplain(s);
      const health = 'adminListen' in config ? config.adminListen : config.healthListen;
      expect(isWildcard(health), `health listener ${JSON.stringify(health)}`).toBe(true);
      expect(probePorts(s.container)).toEqual([health?.port, health?.port]);
    });

    test('the grace period outlasts the preStop sleep plus the drain delay and timeout', () => {
      expect(drainMs(resolveOrExplain(s))).toBeLessThan(drainBudgetMs(s));
    });

    test('its id comes from the pod name, so replicas never share one', () => {
      const config = resolveOrExplain(s);
      expect('serverId' in config ? config.serverId : config.agentId).toBe(s.view.podName);
    });

    if (s.cli === 'tunnel-server') {
      test('listens on all interfaces, on the port its Services target', () => {
        const server = resolveOrExplain(s) as ServerConfig;
        expect(isWildcard(server.listen)).toBe(true);
        const services = s.objects.filter(
          (o) => o.kind === 'Service' && selectorMatches(o.spec.selector, s.template.labels),
        );
        const targets = services.flatMap((svc) =>
          svc.spec.ports.map((p: K8sObject) => resolvePort(s.container, p.targetPort)),
        );
        expect(targets.length).toBeGreaterThan(0);
        expect(new Set(targets)).toEqual(new Set([server.listen.port]));
      });

      test("tells agents its Deployment's replica count, so they hold a session to every replica", () => {
        const server = resolveOrExplain(s) as ServerConfig;
        expect(server.serverCount).toBe(s.template.owner.spec?.replicas ?? 1);
      });

      test('files come from the right volumes: secrets from Secrets, state on a writable emptyDir', () => {
        const server = resolveOrExplain(s) as ServerConfig;
        expect(mountKind(s, server.configFile), where(server.configFile)).toBe('configMap');
        expect(mountKind(s, server.dataDir), where(server.dataDir)).toBe('emptyDir');
        expect(s.view.mountOf(server.dataDir)?.readOnly, where(server.dataDir)).toBe(false);
        // Production TLS: a certificate from a Secret, not the self-signed default.
        expect(mountKind(s, server.tlsCert), where(server.tlsCert)).toBe('secret');
        expect(mountKind(s, server.tlsKey), where(server.tlsKey)).toBe('secret');
        for (const key of server.tokenPublicKey) expect(mountKind(s, key), where(key)).toBe('secret');
        if (server.revokedFile !== undefined)
          expect(mountKind(s, server.revokedFile), where(server.revokedFile)).not.toBe('none');
        expect(server.domain).not.toBe('proxy.localhost');
      });
    }

    if (s.cli === 'tunnel-client') {
      test('files come from the right volumes: the token from a Secret, never a literal', () => {
        const agent = resolveOrExplain(s) as ClientConfig;
        expect(agent.token, 'a literal token in the manifest').toBeUndefined();
        expect(mountKind(s, agent.tokenFile), where(agent.tokenFile)).toBe('secret');
        if (agent.caFile !== undefined)
          expect(mountKind(s, agent.caFile), where(agent.caFile)).not.toBe('none');
        expect(new URL(agent.server).protocol).toBe('wss:');
        expect(agent.route.map((r) => r.name)).toContain('apiserver');
      });
    }

    if (hasEgressRule(s)) {
      test('the agent may reach the server, or the proxy it resolves, and no other port beyond DNS and the API server', () => {
        const agent = resolveOrExplain(s) as ClientConfig;
        const { rules } = egressRules(s.objects, s.template);
        const via = new URL(agent.proxyUrl ?? agent.server);
        const viaPort = Number(via.port || (via.protocol === 'http:' ? 80 : 443));
        // The API server's rule is the one that opens 6443 (kubeadm's port); the server's or the
        // proxy's must be another rule, or the overlay added nothing.
        const opens = (r: EgressRule, port: number) =>
          r.ports.some((p) => p.port === port && p.protocol === 'TCP');
        const viaRules = rules.filter((r) => opens(r, viaPort) && !opens(r, 6443));
        expect(viaRules.length, `an egress rule to ${via.host}`).toBeGreaterThan(0);
        const stray = rules.flatMap((r) => r.ports).filter((p) => ![53, 443, 6443, viaPort].includes(p.port));
        expect(stray).toEqual([]);
        if (s.dir.includes('behind-proxy')) {
          expect(agent.proxyUrl, 'behind-proxy sets HTTPS_PROXY').toBeDefined();
          // NO_PROXY must not send the server around the proxy.
          const host = new URL(agent.server).hostname;
          const bypassed = agent.noProxy.some(
            (e) =>
              e === '*' || host === e.replace(/^\./, '') || host.endsWith(e.startsWith('.') ? e : `.${e}`),
          );
          expect(bypassed, `NO_PROXY ${agent.noProxy.join(',')} covers ${host}`).toBe(false);
        } else {
          expect(agent.proxyUrl).toBeUndefined();
        }
      });
    }
  });

test('the sandbox maps mounts and rewrites paths in flags, env lists and mounted YAML', () => {
  const s = subjects('deploy/server/base').find((x) => x.cli === 'tunnel-server') as Subject;
  const config = resolveOrExplain(s) as ServerConfig;
  expect(podPathOf(s.view, config.tlsCert as string)).toBe('/etc/tunnel/tls/tls.crt');
  expect(config.tokenPublicKey.map((k) => podPathOf(s.view, k))).toEqual([
    '/etc/tunnel/token-keys/token-signing.pub',
  ]);
  // Every absolute path in the mounted server.yaml now points into the sandbox.
  const paths = readFileSync(config.configFile as string, 'utf8').match(/(?<=[:-] )\/\S+/g) ?? [];
  expect(paths.length).toBeGreaterThan(0);
  for (const p of paths) expect(s.view.mountOf(p), p).toBeDefined();
});
