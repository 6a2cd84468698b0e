// Rebuilds, in a temp directory, what one rendered container sees: its argv and environment as
// the kubelet would pass them, and its volume mounts as local directories, so the real config
// resolver and the real CLI can check them on this machine. Each mountPath maps to a directory
// under the sandbox root and every path in argv, env and mounted YAML files is rewritten to it.
// ConfigMaps come from the rendered objects (real content); Secrets are never in the repository,
// so their files get well-formed dummy content (a certificate, a key, an Ed25519 public key, a
// token), but only the keys that `items` lists when it lists any.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { parse, stringify } from 'yaml';
import type { Container, K8sObject, PodTemplate } from './kustomize.js';

/** The image's WORKDIR (Dockerfile); relative paths in a container resolve against it. */
export const IMAGE_WORKDIR = '/app';
/** What kubelet puts in every pod's environment (enableServiceLinks: false adds nothing else). */
export const POD_ENV = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' } as const;

export type VolumeKind = 'configMap' | 'secret' | 'emptyDir';

export interface Mount {
  mountPath: string;
  localDir: string;
  volumeName: string;
  kind: VolumeKind;
  readOnly: boolean;
}

export interface ContainerView {
  podName: string;
  namespace: string;
  /** command[0], e.g. tunnel-server. */
  executable: string;
  /** command[1..] + args, expanded and rewritten. */
  argv: string[];
  /** The container's environment (POD_ENV, envFrom, env), expanded and rewritten. */
  env: Record<string, string>;
  /** Names of the variables the manifest sets (env and envFrom), in order. */
  manifestEnvNames: string[];
  /** The sandbox directory standing for IMAGE_WORKDIR. */
  cwd: string;
  mounts: Mount[];
  /** The mount a resolved local path lies under, if any. */
  mountOf(localPath: string): Mount | undefined;
}

let dummyPem: { cert: string; key: string; pub: string } | undefined;

function dummyContent(fileName: string): string {
  if (dummyPem === undefined) {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    dummyPem = {
      // Shape only: nothing in a config check may depend on a real chain.
      cert: '-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n',
      key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      pub: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    };
  }
  if (/\.(crt|pem|cert)$/.test(fileName)) return dummyPem.cert;
  if (/\.key$/.test(fileName)) return dummyPem.key;
  if (/\.pub$/.test(fileName)) return dummyPem.pub;
  return 'dummy.token.value\n';
}

function expandVars(value: string, env: Record<string, string>): string {
  // Kubernetes dependent variables: $(NAME) from earlier entries, $$ escapes, unknown names stay.
  return value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) =>
    name === undefined ? '$' : (env[name] ?? m),
  );
}

export function podNameFor(template: PodTemplate): string {
  return `${template.owner.metadata.name}-6d4cf56db6-x7k2p`;
}

export function buildContainerView(
  objects: K8sObject[],
  template: PodTemplate,
  container: Container,
  root: string,
): ContainerView {
  const namespace: string = template.owner.metadata.namespace ?? 'default';
  const podName = podNameFor(template);
  const volumes = new Map<string, K8sObject>(
    (template.spec.volumes ?? []).map((v: K8sObject) => [v.name, v]),
  );
  const configMap = (name: string): K8sObject => {
    const cm = objects.find(
      (o) =>
        o.kind === 'ConfigMap' &&
        o.metadata.name === name &&
        (o.metadata.namespace ?? namespace) === namespace,
    );
    if (cm === undefined) throw new Error(`ConfigMap ${name} is referenced but not rendered`);
    return cm;
  };

  const mounts: Mount[] = (container.volumeMounts ?? []).map((vm: K8sObject): Mount => {
    if (vm.subPath !== undefined || vm.subPathExpr !== undefined) {
      throw new Error(`${vm.name}: subPath mounts are not modelled (and miss ConfigMap/Secret updates)`);
    }
    const volume = volumes.get(vm.name);
    if (volume === undefined) throw new Error(`volumeMount ${vm.name} has no volume`);
    const kind = (['configMap', 'secret', 'emptyDir'] as const).find((k) => volume[k] !== undefined);
    if (kind === undefined)
      throw new Error(`volume ${vm.name}: only configMap, secret and emptyDir are modelled`);
    const localDir = join(root, 'mnt', ...vm.mountPath.split('/').filter(Boolean));
    mkdirSync(localDir, { recursive: true });
    return { mountPath: vm.mountPath, localDir, volumeName: vm.name, kind, readOnly: vm.readOnly === true };
  });
  // Longest first, so /etc/tunnel/tls wins over a mount at /etc/tunnel.
  const byLength = [...mounts].sort((a, b) => b.mountPath.length - a.mountPath.length);

  /** A pod path → its sandbox path; creates a Secret's dummy file when the Secret lists no items. */
  const toLocal = (podPath: string): string => {
    for (const m of byLength) {
      if (podPath !== m.mountPath && !podPath.startsWith(`${m.mountPath}/`)) continue;
      const local = join(m.localDir, podPath.slice(m.mountPath.length));
      const secret = volumes.get(m.volumeName)?.secret;
      if (secret !== undefined && secret.items === undefined && local !== m.localDir && !existsSync(local)) {
        mkdirSync(dirname(local), { recursive: true });
        writeFileSync(local, dummyContent(local));
      }
      return local;
    }
    return podPath;
  };
  /** Rewrites absolute paths inside a flag, env value or comma-separated list. */
  const rewrite = (value: string): string =>
    value.replace(/(^|[=,])(\/[^=,]*)/g, (_m, lead: string, path: string) => lead + toLocal(path));
  const rewriteYaml = (value: unknown): unknown => {
    if (typeof value === 'string') return value.startsWith('/') ? toLocal(value) : value;
    if (Array.isArray(value)) return value.map(rewriteYaml);
    if (value !== null && typeof value === 'object') {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, rewriteYaml(v)]));
    }
    return value;
  };

  for (const m of mounts) {
    const volume = volumes.get(m.volumeName) as K8sObject;
    if (m.kind === 'secret') {
      for (const item of volume.secret.items ?? []) {
        const local = join(m.localDir, item.path);
        mkdirSync(dirname(local), { recursive: true });
        writeFileSync(local, dummyContent(item.path));
      }
    } else if (m.kind === 'configMap') {
      const data: Record<string, string> = configMap(volume.configMap.name).data ?? {};
      const items: { key: string; path: string }[] =
        volume.configMap.items ?? Object.keys(data).map((key) => ({ key, path: key }));
      for (const { key, path } of items) {
        if (data[key] === undefined) throw new Error(`ConfigMap ${volume.configMap.name} has no key ${key}`);
        const text = /\.ya?ml$/.test(key) ? stringify(rewriteYaml(parse(data[key]))) : data[key];
        const local = join(m.localDir, path);
        mkdirSync(dirname(local), { recursive: true });
        writeFileSync(local, text);
      }
    }
  }

  const fieldRef = (fieldPath: string): string => {
    const fields: Record<string, string> = {
      'metadata.name': podName,
      'metadata.namespace': namespace,
      'spec.nodeName': 'node-1',
      'spec.serviceAccountName': template.spec.serviceAccountName ?? 'default',
      'status.podIP': '10.244.1.23',
      'status.hostIP': '10.0.0.11',
    };
    const value = fields[fieldPath];
    if (value === undefined) throw new Error(`fieldRef ${fieldPath} is not modelled`);
    return value;
  };

  const env: Record<string, string> = { ...POD_ENV, HOSTNAME: podName };
  const manifestEnvNames: string[] = [];
  for (const from of container.envFrom ?? []) {
    if (from.configMapRef === undefined) throw new Error('envFrom: only configMapRef is modelled');
    for (const [name, value] of Object.entries(configMap(from.configMapRef.name).data ?? {})) {
      const full = `${from.prefix ?? ''}${name}`;
      env[full] = rewrite(String(value));
      manifestEnvNames.push(full);
    }
  }
  for (const e of container.env ?? []) {
    let value: string;
    if (e.value !== undefined) value = rewrite(expandVars(String(e.value), env));
    else if (e.valueFrom?.fieldRef !== undefined) value = fieldRef(e.valueFrom.fieldRef.fieldPath);
    else if (e.valueFrom?.configMapKeyRef !== undefined) {
      const ref = e.valueFrom.configMapKeyRef;
      value = rewrite(String(configMap(ref.name).data?.[ref.key] ?? ''));
    } else if (e.valueFrom?.secretKeyRef !== undefined)
      value = dummyContent(e.valueFrom.secretKeyRef.key).trim();
    else value = '';
    env[e.name] = value;
    manifestEnvNames.push(e.name);
  }

  const [executable, ...commandRest] = (container.command ?? []) as string[];
  if (executable === undefined) throw new Error(`${container.name}: set command (the image runs both CLIs)`);
  const argv = [...commandRest, ...((container.args ?? []) as string[])].map((a) =>
    rewrite(expandVars(a, env)),
  );

  const cwd = join(root, ...(container.workingDir ?? IMAGE_WORKDIR).split('/').filter(Boolean));
  mkdirSync(cwd, { recursive: true });
  const mountOf = (localPath: string): Mount | undefined =>
    byLength.find((m) => localPath === m.localDir || localPath.startsWith(`${m.localDir}${sep}`));

  return { podName, namespace, executable, argv, env, manifestEnvNames, cwd, mounts, mountOf };
}

/** For messages: a sandbox path shown as the pod path it stands for. */
export function podPathOf(view: ContainerView, localPath: string): string {
  const m = view.mountOf(localPath);
  return m === undefined ? localPath : `${m.mountPath}/${relative(m.localDir, localPath)}`.replace(/\/$/, '');
}
