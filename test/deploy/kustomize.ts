// Renders deploy/ with the kustomize built into the real kubectl and picks the rendered objects
// apart: kustomizations on disk, pod templates, named ports, policies that select a pod.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { findKubectl } from '../helpers/kubectl.js';
import { createTempDir } from '../helpers/temp-dir.js';

export const REPO_DIR = join(import.meta.dirname, '..', '..');
export const DEPLOY_DIR = join(REPO_DIR, 'deploy');

/* eslint-disable @typescript-eslint/no-explicit-any -- rendered YAML is untyped by nature */
export type K8sObject = Record<string, any>;
export type PodSpec = Record<string, any>;
export type Container = Record<string, any>;
/* eslint-enable @typescript-eslint/no-explicit-any */

export interface Kustomization {
  /** Relative to the repository, e.g. deploy/client/overlays/in-cluster. */
  dir: string;
  kind: 'Kustomization' | 'Component';
}

/** Every directory under deploy/ with a kustomization.yaml, sorted. */
export function listKustomizations(root = DEPLOY_DIR): Kustomization[] {
  const found: Kustomization[] = [];
  const walk = (dir: string): void => {
    const file = join(dir, 'kustomization.yaml');
    if (existsSync(file)) {
      const doc = parse(readFileSync(file, 'utf8')) as { kind?: string } | null;
      found.push({
        dir: relative(REPO_DIR, dir),
        kind: doc?.kind === 'Component' ? 'Component' : 'Kustomization',
      });
    }
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.isDirectory()) walk(join(dir, entry.name));
    }
  };
  walk(root);
  return found.sort((a, b) => a.dir.localeCompare(b.dir));
}

const rendered = new Map<string, K8sObject[]>();

/** `kubectl kustomize <dir>` (dir relative to the repository), parsed; cached per directory. */
export function render(dir: string): K8sObject[] {
  const cached = rendered.get(dir);
  if (cached !== undefined) return cached;
  const result = spawnSync(findKubectl(), ['kustomize', join(REPO_DIR, dir)], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', HOME: tmpdir() },
    timeout: 60_000,
  });
  if (result.status !== 0) {
    throw new Error(`kubectl kustomize ${dir} failed (${result.status ?? result.signal}): ${result.stderr}`);
  }
  const objects = parseAllDocuments(result.stdout).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`kubectl kustomize ${dir}: ${doc.errors[0]?.message}`);
    return doc.toJS() as K8sObject;
  });
  rendered.set(dir, objects);
  return objects;
}

/**
 * Renders a kustomization made on the fly in a temp directory: `resources` and `components` are
 * directories relative to the repository (kustomize refuses absolute paths, so they are made
 * relative to the temp directory).
 */
export function renderComposed(resources: string[], components: string[]): K8sObject[] {
  const temp = createTempDir('tunnel-kustomize-');
  const dir = temp.path;
  try {
    const rel = (d: string): string => relative(dir, join(REPO_DIR, d));
    const lines = [
      'apiVersion: kustomize.config.k8s.io/v1beta1',
      'kind: Kustomization',
      'resources:',
      ...resources.map((d) => `  - ${rel(d)}`),
      'components:',
      ...components.map((d) => `  - ${rel(d)}`),
    ];
    writeFileSync(join(dir, 'kustomization.yaml'), `${lines.join('\n')}\n`);
    return render(relative(REPO_DIR, dir));
  } finally {
    temp.remove();
  }
}

export interface PodTemplate {
  owner: K8sObject;
  /** "Deployment/tunnel-agent" */
  name: string;
  labels: Record<string, string>;
  spec: PodSpec;
}

/** The pod templates of every workload kind, and bare Pods. */
export function podTemplates(objects: K8sObject[]): PodTemplate[] {
  const out: PodTemplate[] = [];
  for (const o of objects) {
    const name = `${o.kind}/${o.metadata?.name}`;
    let template: K8sObject | undefined;
    if (['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job'].includes(o.kind)) {
      template = o.spec?.template;
    } else if (o.kind === 'CronJob') {
      template = o.spec?.jobTemplate?.spec?.template;
    } else if (o.kind === 'Pod') {
      template = o;
    }
    if (template !== undefined) {
      out.push({ owner: o, name, labels: template.metadata?.labels ?? {}, spec: template.spec ?? {} });
    }
  }
  return out;
}

export function allContainers(spec: PodSpec): Container[] {
  return [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
}

/** A container port by name or number, as probes and Services name it. */
export function resolvePort(container: Container, port: number | string): number | undefined {
  if (typeof port === 'number') return port;
  const named = (container.ports ?? []).find((p: K8sObject) => p.name === port);
  return named?.containerPort;
}

export function selectorMatches(
  matchLabels: Record<string, string> | undefined,
  labels: Record<string, string>,
) {
  if (matchLabels === undefined) return false;
  return Object.entries(matchLabels).every(([k, v]) => labels[k] === v);
}

export function findObject(objects: K8sObject[], kind: string, name: string): K8sObject | undefined {
  return objects.find((o) => o.kind === kind && o.metadata?.name === name);
}
