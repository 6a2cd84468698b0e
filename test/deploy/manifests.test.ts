// deploy/: every kustomization renders with the real `kubectl kustomize`, every rendered object is
// valid against the Kubernetes schemas (kubernetes-models) with no unknown field, every pod
// template is hardened, and the agent and server keep the shape the deployment promises.
// kubectl is required: without it these tests fail, they do not skip.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { resolveClientConfig } from '../../packages/client/src/config.js';
import { validateObject } from './k8s-schema.js';
import type { K8sObject, PodTemplate } from './kustomize.js';
import {
  DEPLOY_DIR,
  findObject,
  listKustomizations,
  podTemplates,
  render,
  renderComposed,
  resolvePort,
  selectorMatches,
} from './kustomize.js';
import { availabilityViolations, egressRules, hardeningViolations } from './pod-rules.js';

const kustomizations = listKustomizations().filter((k) => k.kind === 'Kustomization');
const dirs = kustomizations.map((k) => k.dir);
const agentDirs = dirs.filter((d) => d.startsWith('deploy/client/'));
const serverDirs = dirs.filter((d) => d.startsWith('deploy/server/'));

async function schemaProblems(objects: K8sObject[]): Promise<string[]> {
  const problems: string[] = [];
  for (const o of objects) {
    for (const p of await validateObject(o)) {
      problems.push(`${o.kind}/${o.metadata?.name}${p.path}: ${p.message}`);
    }
  }
  return problems;
}

function workload(objects: K8sObject[], name: string): PodTemplate {
  const t = podTemplates(objects).find((p) => p.name === `Deployment/${name}`);
  if (t === undefined) throw new Error(`no Deployment/${name} rendered`);
  return t;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

test('deploy/ has the agent overlays in-cluster and behind-proxy and the server base and ha overlay', () => {
  expect(dirs).toEqual(
    expect.arrayContaining([
      'deploy/client/overlays/in-cluster',
      'deploy/client/overlays/behind-proxy',
      'deploy/server/base',
      'deploy/server/overlays/ha',
    ]),
  );
});

test('the schema check reports a wrong type and a misspelled field', async () => {
  // Pins the unknown-field tracking in k8s-schema.ts: the Kubernetes schemas alone accept typos.
  const deployment = structuredClone(workload(render('deploy/server/base'), 'tunnel-server').owner);
  deployment.spec.replicas = 'three';
  const container = deployment.spec.template.spec.containers[0];
  container.securityContext.readOnlyRootFileSystem = true;
  const problems = await validateObject(deployment);
  expect(problems).toEqual(
    expect.arrayContaining([
      expect.objectContaining({ path: '/spec/replicas' }),
      {
        path: '/spec/template/spec/containers/0/securityContext/readOnlyRootFileSystem',
        message: 'unknown field',
      },
    ]),
  );
  expect(await validateObject({ apiVersion: 'example.com/v1', kind: 'Widget' })).toEqual([
    { path: '', message: 'no schema for example.com/v1 Widget' },
  ]);
});

describe.each(dirs)('%s', (dir) => {
  test('renders with kubectl kustomize', () => {
    expect(render(dir).length).toBeGreaterThan(0);
  });

  test('every object is valid against the Kubernetes schemas, with no unknown field', async () => {
    expect(await schemaProblems(render(dir))).toEqual([]);
  });

  test('no Secret is rendered: Secrets are created at install time, never kept in the repository', () => {
    expect(render(dir).filter((o) => o.kind === 'Secret')).toEqual([]);
  });

  test('every pod template is hardened', () => {
    const templates = podTemplates(render(dir));
    expect(templates.length).toBeGreaterThan(0);
    expect(Object.fromEntries(templates.map((t) => [t.name, hardeningViolations(t)]))).toEqual(
      Object.fromEntries(templates.map((t) => [t.name, []])),
    );
  });

  test('every namespaced object names a namespace the kustomization creates', () => {
    const objects = render(dir);
    const created = objects.filter((o) => o.kind === 'Namespace').map((o) => o.metadata.name);
    const clusterScoped = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding']);
    const misplaced = objects
      .filter((o) => !clusterScoped.has(o.kind) && !created.includes(o.metadata.namespace))
      .map((o) => `${o.kind}/${o.metadata.name} in ${o.metadata.namespace ?? '(none)'}`);
    expect(misplaced).toEqual([]);
  });

  test('every namespace enforces the restricted Pod Security Standard', () => {
    const namespaces = render(dir).filter((o) => o.kind === 'Namespace');
    expect(namespaces.length).toBeGreaterThan(0);
    for (const ns of namespaces) {
      expect(ns.metadata.labels?.['pod-security.kubernetes.io/enforce'], ns.metadata.name).toBe('restricted');
    }
  });
});

describe.each(agentDirs.filter((d) => d.includes('/overlays/')))('agent %s', (dir) => {
  test('runs 2 replicas with pod anti-affinity, a surge-only rollout and a PodDisruptionBudget', () => {
    const objects = render(dir);
    expect(availabilityViolations(objects, workload(objects, 'tunnel-agent'), 2)).toEqual([]);
    expect(workload(objects, 'tunnel-agent').owner.spec.replicas).toBe(2);
  });

  test('may reach only named peers on named ports, DNS and the API server among them', () => {
    const objects = render(dir);
    const { violations, rules } = egressRules(objects, workload(objects, 'tunnel-agent'));
    expect(violations).toEqual([]);
    expect(rules.flatMap((r) => r.ports)).toEqual(
      expect.arrayContaining([
        { port: 53, protocol: 'UDP' },
        { port: 53, protocol: 'TCP' },
        { port: 6443, protocol: 'TCP' },
      ]),
    );
  });

  test('has a ServiceAccount and no RBAC: passthrough needs no API access', () => {
    const objects = render(dir);
    const t = workload(objects, 'tunnel-agent');
    expect(findObject(objects, 'ServiceAccount', t.spec.serviceAccountName)).toBeDefined();
    expect(objects.filter((o) => /Role(Binding)?$/.test(o.kind))).toEqual([]);
  });
});

test('the agent-tls component adds its RBAC to an agent overlay and still validates', async () => {
  const objects = renderComposed(
    ['deploy/client/overlays/in-cluster'],
    ['deploy/client/components/agent-tls'],
  );
  expect(await schemaProblems(objects)).toEqual([]);
  const binding = findObject(objects, 'ClusterRoleBinding', 'tunnel-agent-tls');
  const sa = findObject(objects, 'ServiceAccount', 'tunnel-agent');
  expect(binding?.subjects).toEqual([
    { kind: 'ServiceAccount', name: 'tunnel-agent', namespace: sa?.metadata.namespace },
  ]);
  expect(findObject(objects, 'ClusterRole', binding?.roleRef.name)).toBeDefined();
});

test('the dashboard component adds an http route the agent accepts, and egress to the dashboard only', async () => {
  const objects = renderComposed(
    ['deploy/client/overlays/in-cluster'],
    ['deploy/client/components/dashboard'],
  );
  expect(await schemaProblems(objects)).toEqual([]);
  const t = workload(objects, 'tunnel-agent');
  const args = t.spec.containers[0].args as string[];
  const route = args.find((a) => a.startsWith('--route=dashboard='));
  expect(route).toBeDefined();
  const config = resolveClientConfig({
    argv: [
      ...args.filter((a) => a.startsWith('--route')),
      '--server',
      'wss://tunnel.example.com',
      '--token',
      't',
    ],
    env: {},
    cwd: '/',
  });
  expect(config.route.find((r) => r.name === 'dashboard')).toMatchObject({ scheme: 'https', port: 443 });
  const policy = findObject(objects, 'NetworkPolicy', 'tunnel-agent-egress-dashboard');
  expect(policy?.spec.egress).toHaveLength(1);
  expect(policy?.spec.egress[0].to[0].namespaceSelector.matchLabels).toEqual({
    'kubernetes.io/metadata.name': 'kubernetes-dashboard',
  });
});

describe.each(serverDirs)('server %s', (dir) => {
  test('runs replicas with pod anti-affinity, a surge-only rollout and a PodDisruptionBudget', () => {
    const objects = render(dir);
    const t = workload(objects, 'tunnel-server');
    expect(availabilityViolations(objects, t, 2)).toEqual([]);
    if (dir.endsWith('/ha')) {
      expect(t.owner.spec.replicas).toBe(3);
      expect(t.spec.topologySpreadConstraints?.map((c: K8sObject) => c.topologyKey)).toContain(
        'topology.kubernetes.io/zone',
      );
    }
  });

  test('is exposed by a LoadBalancer Service on 443 that targets the container port 8443', () => {
    const objects = render(dir);
    const t = workload(objects, 'tunnel-server');
    const services = objects.filter(
      (o) => o.kind === 'Service' && selectorMatches(o.spec.selector, t.labels),
    );
    expect(services.map((s) => s.spec.type)).toEqual(['LoadBalancer']);
    const container = t.spec.containers[0];
    expect(
      services[0]?.spec.ports.map((p: K8sObject) => [p.port, resolvePort(container, p.targetPort)]),
    ).toEqual([[443, 8443]]);
  });

  test('takes its configuration file from a ConfigMap rendered with it', () => {
    const objects = render(dir);
    const t = workload(objects, 'tunnel-server');
    const names = (t.spec.volumes ?? [])
      .filter((v: K8sObject) => v.configMap)
      .map((v: K8sObject) => v.configMap.name);
    const config = objects.find(
      (o) => o.kind === 'ConfigMap' && names.includes(o.metadata.name) && o.data?.['server.yaml'],
    );
    expect(config).toBeDefined();
  });
});

test('every Secret the manifests mount or reference is one deploy/README.md tells how to create', () => {
  const readme = readFileSync(join(DEPLOY_DIR, 'README.md'), 'utf8');
  const referenced = new Set<string>();
  for (const dir of dirs) {
    for (const t of podTemplates(render(dir))) {
      for (const v of t.spec.volumes ?? []) if (v.secret) referenced.add(v.secret.secretName);
      for (const c of t.spec.containers ?? []) {
        for (const e of c.env ?? [])
          if (e.valueFrom?.secretKeyRef) referenced.add(e.valueFrom.secretKeyRef.name);
      }
    }
  }
  expect([...referenced].sort()).toEqual(['tunnel-agent', 'tunnel-server-tls', 'tunnel-server-token-keys']);
  for (const name of referenced) expect(readme, name).toMatch(new RegExp(`create secret \\w+ ${name}\\b`));
});

test('no file under deploy/ holds key material or a certificate', () => {
  const offenders = filesUnder(DEPLOY_DIR).filter((f) =>
    /-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----/.test(readFileSync(f, 'utf8')),
  );
  expect(offenders).toEqual([]);
});
