// Validates rendered Kubernetes objects against the OpenAPI schemas compiled into kubernetes-models
// (no hand-written schema). The Kubernetes schemas allow unknown fields, which the API server then
// drops or, with strict field validation, refuses; so the same validator also reports every field
// the schema never looked at: a misspelled `readOnlyRootFileSystem` must not pass as "valid".

export interface SchemaProblem {
  /** JSON pointer into the object, e.g. /spec/template/spec/containers/0/securityContext. */
  path: string;
  message: string;
}

interface ValidatingModel {
  validate(this: unknown): void;
}

type ModelModule = Record<string, { prototype: ValidatingModel } | undefined>;

const modules = new Map<string, Promise<ModelModule>>();

/** kubernetes-models lays its classes out by apiVersion: core `v1`, else `<group>/<version>`. */
function loadModule(apiVersion: string): Promise<ModelModule> {
  let loaded = modules.get(apiVersion);
  if (loaded === undefined) {
    // A computed specifier: tell vite not to resolve it at transform time.
    // The Prometheus Operator's kinds (ServiceMonitor, PodMonitor, PrometheusRule) have their own package.
    const from = apiVersion.startsWith('monitoring.coreos.com/')
      ? `@kubernetes-models/prometheus-operator/${apiVersion}`
      : `kubernetes-models/${apiVersion}`;
    loaded = import(/* @vite-ignore */ from) as Promise<ModelModule>;
    modules.set(apiVersion, loaded);
  }
  return loaded;
}

/**
 * Wraps `value` so that every property the validator reads is recorded. The compiled validators
 * read each property their schema defines by name and enumerate the keys only of maps
 * (additionalProperties: labels, data, resources.limits ...), so a key of a plain object that was
 * never read is a field the schema does not define.
 */
function track(value: unknown, path: string, seen: Map<string, Set<string> | 'all'>): unknown {
  if (value === null || typeof value !== 'object') return value;
  const accessed = new Set<string>();
  seen.set(path, accessed);
  return new Proxy(value as object, {
    get(target, key, receiver) {
      const child: unknown = Reflect.get(target, key, receiver);
      if (typeof key !== 'string') return child;
      accessed.add(key);
      if (!Object.prototype.hasOwnProperty.call(target, key)) return child;
      return track(child, `${path}/${key}`, seen);
    },
    has(target, key) {
      if (typeof key === 'string') accessed.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      seen.set(path, 'all');
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(
  value: unknown,
  path: string,
  seen: Map<string, Set<string> | 'all'>,
): SchemaProblem[] {
  if (value === null || typeof value !== 'object') return [];
  const accessed = seen.get(path);
  // Not visited: below a field already reported, or inside a free-form (x-preserve-unknown) value.
  if (accessed === undefined) return [];
  const problems: SchemaProblem[] = [];
  for (const [key, child] of Object.entries(value)) {
    if (!Array.isArray(value) && accessed !== 'all' && !accessed.has(key)) {
      problems.push({ path: `${path}/${key}`, message: 'unknown field' });
      continue;
    }
    problems.push(...unknownFields(child, `${path}/${key}`, seen));
  }
  return problems;
}

/** All schema problems of one object (empty: valid); an apiVersion/kind without a schema is one. */
export async function validateObject(object: Record<string, unknown>): Promise<SchemaProblem[]> {
  const { apiVersion, kind } = object;
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') {
    return [{ path: '', message: 'apiVersion and kind must be strings' }];
  }
  let model: { prototype: ValidatingModel } | undefined;
  try {
    model = (await loadModule(apiVersion))[kind];
  } catch {
    model = undefined;
  }
  if (model === undefined) return [{ path: '', message: `no schema for ${apiVersion} ${kind}` }];

  const seen = new Map<string, Set<string> | 'all'>();
  const problems: SchemaProblem[] = [];
  try {
    model.prototype.validate.call(track(object, '', seen));
  } catch (err) {
    const errors = (err as { errors?: { instancePath?: string; message?: string }[] }).errors;
    if (!Array.isArray(errors)) return [{ path: '', message: String(err) }];
    problems.push(...errors.map((e) => ({ path: e.instancePath ?? '', message: e.message ?? 'invalid' })));
  }
  // The compiled validators collect all errors (they do not stop at the first), so every field
  // was visited either way.
  return [...problems, ...unknownFields(object, '', seen)];
}
