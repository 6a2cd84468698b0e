// deploy/: every kustomization renders with the real `kubectl kustomize`, every rendered object is
// valid against the Kubernetes schemas (kubernetes-models) with no unknown field, every pod
// template is hardened, and the agent and server keep the shape the deployment promises.
// kubectl is required: without it these tests fail, they do not skip.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, test } from 'vitest';
import { SERVICE_ACCOUNT_CA_FILE, resolveClientConfig } from '../../packages/client/src/config.js';
import { resolveServerConfig } from '../../packages/server/src/config.js';
import { tempDir } from '../helpers/temp-dir.js';
import { validateObject } from './k8s-schema.js';
import type { K8sObject, PodTemplate } from './kustomize.js';
import {
  DEPLOY_DIR,
  REPO_DIR,
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

/**
 * `objects` with one Deployment replaced by `undo` applied to a copy of it: what a component's
 * render must equal once its own changes are taken back, to prove it changed nothing else.
 */
function undoneIn(objects: K8sObject[], name: string, undo: (deployment: K8sObject) => void): K8sObject[] {
  return objects.map((o) => {
    if (o.kind !== 'Deployment' || o.metadata?.name !== name) return o;
    const copy = structuredClone(o);
    undo(copy);
    return copy;
  });
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

describe.each(['deploy/client/overlays/in-cluster', 'deploy/client/overlays/behind-proxy'])(
  'the agent-tls component on %s',
  (overlay) => {
    const objects = renderComposed([overlay], ['deploy/client/components/agent-tls']);
    const base = render(overlay);

    test('validates, and grants the agent no API permission and no token', async () => {
      expect(await schemaProblems(objects)).toEqual([]);
      // Users' credentials pass through to the API server; the agent acts in nobody's name.
      expect(objects.filter((o) => /Role(Binding)?$/.test(o.kind))).toEqual([]);
      const t = workload(objects, 'tunnel-agent');
      expect(hardeningViolations(t)).toEqual([]);
      expect(t.spec.automountServiceAccountToken).toBe(false);
      expect(
        findObject(objects, 'ServiceAccount', t.spec.serviceAccountName)?.automountServiceAccountToken,
      ).toBe(false);
      // No projected token anywhere, and nothing but ca.crt where in-cluster clients look for one.
      const sources = t.spec.volumes.flatMap((v: K8sObject) => v.projected?.sources ?? []);
      expect(sources.filter((src: K8sObject) => src.serviceAccountToken !== undefined)).toEqual([]);
      const saMounts = t.spec.containers[0].volumeMounts.filter((m: K8sObject) =>
        m.mountPath.startsWith('/var/run/secrets/kubernetes.io/'),
      );
      // Each file those mounts expose, as "ConfigMap name:path" (any other source by its kind).
      const saPaths = saMounts.flatMap((m: K8sObject) => {
        const v = t.spec.volumes.find((vol: K8sObject) => vol.name === m.name);
        return (v?.projected?.sources ?? [v]).flatMap((src: K8sObject) =>
          src?.configMap
            ? src.configMap.items.map((i: K8sObject) => `${src.configMap.name}:${i.path}`)
            : [JSON.stringify(src)],
        );
      });
      expect(saPaths).toEqual(['kube-root-ca.crt:ca.crt']);
    });

    test('mounts the cluster CA alone where in-cluster clients find it, read-only', () => {
      const t = workload(objects, 'tunnel-agent');
      const before = workload(base, 'tunnel-agent');
      const added = t.spec.volumes.filter(
        (v: K8sObject) => !before.spec.volumes.some((b: K8sObject) => b.name === v.name),
      );
      expect(added).toEqual([
        {
          name: 'cluster-ca',
          projected: {
            defaultMode: 0o444,
            sources: [
              { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
            ],
          },
        },
      ]);
      const mount = t.spec.containers[0].volumeMounts.find((m: K8sObject) => m.name === 'cluster-ca');
      expect(mount).toEqual({
        name: 'cluster-ca',
        mountPath: '/var/run/secrets/kubernetes.io/serviceaccount',
        readOnly: true,
      });
      // Where the agent looks for the cluster CA when a route names none (its in-pod default).
      expect(join(mount.mountPath, 'ca.crt')).toBe(SERVICE_ACCOUNT_CA_FILE);
    });

    test('changes nothing else: without its route, volume and mount the render is the overlay', () => {
      const undone = undoneIn(objects, 'tunnel-agent', (d) => {
        const spec = d.spec.template.spec;
        spec.volumes = spec.volumes.filter((v: K8sObject) => v.name !== 'cluster-ca');
        const c = spec.containers[0];
        c.volumeMounts = c.volumeMounts.filter((m: K8sObject) => m.name !== 'cluster-ca');
        c.args = c.args.map((a: string) =>
          a === '--route=apiserver=kubernetes.default.svc:443,mode=agent-tls'
            ? '--route=apiserver=kubernetes.default.svc:443'
            : a,
        );
      });
      // The egress policy among them: the base's rule to the API server serves both modes.
      expect(undone).toEqual(base);
    });

    test("switches the API server route to agent-tls, which the agent resolves to the mounted CA and the Service's name", () => {
      const t = workload(objects, 'tunnel-agent');
      const args = t.spec.containers[0].args as string[];
      const routes = args.filter((a) => a.startsWith('--route='));
      expect(routes).toEqual(['--route=apiserver=kubernetes.default.svc:443,mode=agent-tls']);
      // As in the pod: the kubelet sets KUBERNETES_SERVICE_HOST, so the resolver fills in the
      // cluster CA and checks that the file exists. Nothing is at the pod's path on this machine,
      // so serviceAccountCaFile points it at a stand-in; the test above pins that the mount puts
      // the CA at the real default (SERVICE_ACCOUNT_CA_FILE).
      const caFile = join(tempDir(), 'ca.crt');
      writeFileSync(caFile, 'the cluster CA');
      const config = resolveClientConfig({
        argv: [...routes, '--server', 'wss://tunnel.example.com', '--token', 't'],
        env: { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' },
        cwd: '/',
        serviceAccountCaFile: caFile,
      });
      expect(config.route).toEqual([
        { name: 'apiserver', host: 'kubernetes.default.svc', port: 443, mode: 'agent-tls', ca: caFile },
      ]);
      // Everything else of the agent is the overlay's, unchanged.
      const before = workload(base, 'tunnel-agent');
      expect(args.filter((a) => !a.startsWith('--route='))).toEqual(
        (before.spec.containers[0].args as string[]).filter((a) => !a.startsWith('--route=')),
      );
    });
  },
);

test('the agent-tls component refuses to apply where the API server route is not the base one', () => {
  // Its patch tests the argument before replacing it: a base whose route moved fails to render
  // instead of silently replacing another flag.
  const dir = tempDir();
  const deployment = readFileSync(join(DEPLOY_DIR, 'client/base/deployment.yaml'), 'utf8').replace(
    '--route=apiserver=kubernetes.default.svc:443',
    '--route=apiserver=10.0.0.1:6443',
  );
  expect(deployment).toContain('--route=apiserver=10.0.0.1:6443');
  writeFileSync(join(dir, 'deployment.yaml'), deployment);
  writeFileSync(
    join(dir, 'kustomization.yaml'),
    [
      'apiVersion: kustomize.config.k8s.io/v1beta1',
      'kind: Kustomization',
      'resources: [deployment.yaml]',
      'components:',
      `  - ${relative(dir, join(DEPLOY_DIR, 'client/components/agent-tls'))}`,
      '',
    ].join('\n'),
  );
  expect(() => render(relative(REPO_DIR, dir))).toThrow(
    /testing value \/spec\/template\/spec\/containers\/0\/args\/2 failed/,
  );
});

describe.each(['deploy/server/base', 'deploy/server/overlays/ha'])(
  'the server agent-tls component on %s',
  (dir) => {
    const objects = renderComposed([dir], ['deploy/server/components/agent-tls']);
    const base = render(dir);

    test('validates, and gives every replica the route CA from the Secret tunnel-server-route-ca', async () => {
      expect(await schemaProblems(objects)).toEqual([]);
      const t = workload(objects, 'tunnel-server');
      expect(hardeningViolations(t)).toEqual([]);
      expect(t.spec.volumes.find((v: K8sObject) => v.name === 'route-ca')).toEqual({
        name: 'route-ca',
        secret: {
          secretName: 'tunnel-server-route-ca',
          defaultMode: 0o440,
          items: [
            { key: 'tls.crt', path: 'tls.crt' },
            { key: 'tls.key', path: 'tls.key' },
          ],
        },
      });
      const container = t.spec.containers[0];
      expect(container.volumeMounts.find((m: K8sObject) => m.name === 'route-ca')).toEqual({
        name: 'route-ca',
        mountPath: '/etc/tunnel/route-ca',
        readOnly: true,
      });
      const env = Object.fromEntries(
        (container.env as K8sObject[]).filter((e) => e.value !== undefined).map((e) => [e.name, e.value]),
      );
      expect(env).toMatchObject({
        TUNNEL_SERVER_ROUTE_CA_CERT: '/etc/tunnel/route-ca/tls.crt',
        TUNNEL_SERVER_ROUTE_CA_KEY: '/etc/tunnel/route-ca/tls.key',
      });
    });

    test('the server resolves its config with the route CA from those paths; without the component it has none', () => {
      const caDir = tempDir();
      writeFileSync(join(caDir, 'tls.crt'), 'x');
      writeFileSync(join(caDir, 'tls.key'), 'x');
      const env = (t: ReturnType<typeof workload>): Record<string, string> =>
        Object.fromEntries(
          (t.spec.containers[0].env as K8sObject[])
            .filter((e) => e.value !== undefined)
            .map((e) => [e.name, String(e.value).replace('/etc/tunnel/route-ca', caDir)]),
        );
      const withCa = resolveServerConfig({
        argv: [],
        env: env(workload(objects, 'tunnel-server')),
        cwd: '/',
      });
      expect(withCa).toMatchObject({
        routeCaCert: join(caDir, 'tls.crt'),
        routeCaKey: join(caDir, 'tls.key'),
      });
      const without = resolveServerConfig({ argv: [], env: env(workload(base, 'tunnel-server')), cwd: '/' });
      expect(without.routeCaCert).toBeUndefined();
      expect(workload(base, 'tunnel-server').spec.volumes.map((v: K8sObject) => v.name)).not.toContain(
        'route-ca',
      );
    });

    test('changes nothing else: without its volume, mount and two variables the render is the base', () => {
      const undone = undoneIn(objects, 'tunnel-server', (d) => {
        const spec = d.spec.template.spec;
        spec.volumes = spec.volumes.filter((v: K8sObject) => v.name !== 'route-ca');
        const c = spec.containers[0];
        c.volumeMounts = c.volumeMounts.filter((m: K8sObject) => m.name !== 'route-ca');
        c.env = c.env.filter((e: K8sObject) => !e.name.startsWith('TUNNEL_SERVER_ROUTE_CA_'));
      });
      expect(undone).toEqual(base);
    });

    test('its Secret is one deploy/README.md tells how to create', () => {
      const names = workload(objects, 'tunnel-server')
        .spec.volumes.filter((v: K8sObject) => v.secret)
        .map((v: K8sObject) => v.secret.secretName);
      expect(names).toContain('tunnel-server-route-ca');
      expect(readFileSync(join(DEPLOY_DIR, 'README.md'), 'utf8')).toMatch(
        /create secret tls tunnel-server-route-ca\b/,
      );
    });
  },
);

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
