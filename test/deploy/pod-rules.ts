// The rules every pod template in deploy/ must meet, as lists of violations (empty: compliant), so
// a failing test names each broken rule at once. Rules that need the resolved CLI configuration
// (grace period against the drain timeout, probe port against the health listener, writable
// dataDir) live in cli-config.test.ts.
import type { Container, K8sObject, PodTemplate } from './kustomize.js';
import { allContainers, resolvePort, selectorMatches } from './kustomize.js';

const RESOURCE_KEYS = ['requests.cpu', 'requests.memory', 'limits.cpu', 'limits.memory'] as const;

function imageProblem(image: unknown): string | undefined {
  if (typeof image !== 'string' || image === '') return 'has no image';
  if (image.includes('@sha256:')) return undefined;
  const lastSegment = image.slice(image.lastIndexOf('/') + 1);
  if (!lastSegment.includes(':')) return `image ${image} has no tag`;
  if (lastSegment.endsWith(':latest')) return `image ${image} uses the latest tag`;
  return undefined;
}

/** Pod hardening: restricted Pod Security Standard and more (read-only root, limits, probes). */
export function hardeningViolations(t: PodTemplate): string[] {
  const v: string[] = [];
  const pod = t.spec.securityContext ?? {};
  const containers = allContainers(t.spec);
  if (containers.length === 0) v.push('has no containers');
  if (t.spec.hostNetwork === true || t.spec.hostPID === true || t.spec.hostIPC === true) {
    v.push('shares a host namespace');
  }
  for (const vol of t.spec.volumes ?? [])
    if (vol.hostPath !== undefined) v.push(`volume ${vol.name} is a hostPath`);
  if (t.spec.automountServiceAccountToken !== false) v.push('mounts a service account token');
  if (typeof t.spec.terminationGracePeriodSeconds !== 'number') {
    v.push('leaves terminationGracePeriodSeconds at the default (set it above the drain timeout)');
  }
  if (pod.runAsUser === 0) v.push('runs as uid 0');

  for (const c of containers) {
    const sc = c.securityContext ?? {};
    const at = `container ${c.name}:`;
    if (sc.runAsNonRoot !== true && pod.runAsNonRoot !== true) v.push(`${at} runAsNonRoot is not true`);
    if (sc.runAsUser === 0) v.push(`${at} runs as uid 0`);
    const seccomp = sc.seccompProfile?.type ?? pod.seccompProfile?.type;
    if (seccomp !== 'RuntimeDefault')
      v.push(`${at} seccompProfile is ${seccomp ?? 'unset'}, not RuntimeDefault`);
    if (sc.allowPrivilegeEscalation !== false) v.push(`${at} allowPrivilegeEscalation is not false`);
    if (sc.readOnlyRootFilesystem !== true) v.push(`${at} readOnlyRootFilesystem is not true`);
    if (sc.privileged === true) v.push(`${at} is privileged`);
    if (!(sc.capabilities?.drop ?? []).includes('ALL')) v.push(`${at} does not drop ALL capabilities`);
    if ((sc.capabilities?.add ?? []).length > 0) v.push(`${at} adds capabilities`);
    for (const key of RESOURCE_KEYS) {
      const [kind, resource] = key.split('.') as [string, string];
      if (c.resources?.[kind]?.[resource] === undefined) v.push(`${at} has no resources.${key}`);
    }
    const image = imageProblem(c.image);
    if (image !== undefined) v.push(`${at} ${image}`);
  }

  for (const c of t.spec.containers ?? []) v.push(...probeViolations(c));
  return v;
}

/** Liveness /healthz and readiness /readyz over HTTP, on one declared container port. */
export function probeViolations(c: Container): string[] {
  const v: string[] = [];
  const at = `container ${c.name}:`;
  const expected = [
    ['livenessProbe', '/healthz'],
    ['readinessProbe', '/readyz'],
  ] as const;
  const ports = new Set<number | undefined>();
  for (const [probe, path] of expected) {
    const get = c[probe]?.httpGet;
    if (get === undefined) {
      v.push(`${at} has no ${probe} httpGet`);
      continue;
    }
    if (get.path !== path) v.push(`${at} ${probe} probes ${get.path}, not ${path}`);
    const port = resolvePort(c, get.port);
    if (port === undefined || !(c.ports ?? []).some((p: K8sObject) => p.containerPort === port)) {
      v.push(`${at} ${probe} port ${get.port} is not a declared container port`);
    }
    ports.add(port);
  }
  if (ports.size > 1) v.push(`${at} liveness and readiness probe different ports`);
  return v;
}

/**
 * Deployment-level availability: replicas, anti-affinity, a matching PDB, and the rollout: agents
 * surge (a new agent registers before the old one leaves); server replicas are replaced one at a
 * time without surge, since a surge replica beyond serverCount would get users but no agents.
 */
export function availabilityViolations(objects: K8sObject[], t: PodTemplate, minReplicas: number): string[] {
  const v: string[] = [];
  const spec = t.owner.spec ?? {};
  if ((spec.replicas ?? 1) < minReplicas)
    v.push(`has ${spec.replicas ?? 1} replicas, fewer than ${minReplicas}`);
  const anti = t.spec.affinity?.podAntiAffinity;
  const terms = [
    ...(anti?.requiredDuringSchedulingIgnoredDuringExecution ?? []),
    ...(anti?.preferredDuringSchedulingIgnoredDuringExecution ?? []).map((w: K8sObject) => w.podAffinityTerm),
  ];
  if (!terms.some((term: K8sObject) => selectorMatches(term?.labelSelector?.matchLabels, t.labels))) {
    v.push('has no pod anti-affinity term that selects its own pods');
  }
  const rollout = spec.strategy?.rollingUpdate ?? {};
  if (t.labels['app.kubernetes.io/component'] === 'server') {
    if (rollout.maxSurge !== 0 || rollout.maxUnavailable !== 1)
      v.push(
        'rolls out with a surge replica that agents would not hold a session to (want maxSurge 0, maxUnavailable 1)',
      );
  } else if (rollout.maxUnavailable !== 0) v.push('may take a pod down before its successor is ready');
  const pdbs = objects.filter(
    (o) =>
      o.kind === 'PodDisruptionBudget' &&
      o.metadata.namespace === t.owner.metadata.namespace &&
      selectorMatches(o.spec?.selector?.matchLabels, t.labels),
  );
  if (pdbs.length !== 1) v.push(`is selected by ${pdbs.length} PodDisruptionBudgets, not 1`);
  return v;
}

/** The NetworkPolicies of the template's namespace that select its pods. */
export function policiesFor(objects: K8sObject[], t: PodTemplate): K8sObject[] {
  return objects.filter(
    (o) =>
      o.kind === 'NetworkPolicy' &&
      o.metadata.namespace === t.owner.metadata.namespace &&
      selectorMatches(o.spec?.podSelector?.matchLabels ?? {}, t.labels),
  );
}

export interface EgressPort {
  port: number;
  protocol: string;
}

export interface EgressRule {
  /** "NetworkPolicy tunnel-agent egress[1]" */
  name: string;
  ports: EgressPort[];
}

/**
 * Egress that is allowed only to named peers on named ports: every rule of every policy selecting
 * the pod lists both `to` and `ports`, and no peer is the whole Internet or every namespace.
 * Returns the violations and the rules.
 */
export function egressRules(
  objects: K8sObject[],
  t: PodTemplate,
): { violations: string[]; rules: EgressRule[] } {
  const violations: string[] = [];
  const rules: EgressRule[] = [];
  const policies = policiesFor(objects, t);
  if (!policies.some((p) => (p.spec.policyTypes ?? []).includes('Egress'))) {
    violations.push('no NetworkPolicy restricts its egress');
  }
  for (const p of policies) {
    (p.spec.egress ?? []).forEach((rule: K8sObject, i: number) => {
      const name = `NetworkPolicy ${p.metadata.name} egress[${i}]`;
      if ((rule.to ?? []).length === 0) violations.push(`${name} allows every destination`);
      if ((rule.ports ?? []).length === 0) violations.push(`${name} allows every port`);
      for (const peer of rule.to ?? []) {
        const cidr: string | undefined = peer.ipBlock?.cidr;
        if (cidr !== undefined && /\/0$/.test(cidr)) violations.push(`${name} allows ${cidr}`);
        if (peer.namespaceSelector !== undefined && Object.keys(peer.namespaceSelector).length === 0) {
          violations.push(`${name} allows every namespace`);
        }
      }
      const ports: EgressPort[] = [];
      for (const port of rule.ports ?? []) {
        if (typeof port.port !== 'number') violations.push(`${name} uses a named or missing port`);
        else ports.push({ port: port.port, protocol: port.protocol ?? 'TCP' });
      }
      rules.push({ name, ports });
    });
  }
  return { violations, rules };
}
