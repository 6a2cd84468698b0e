/**
 * Resolution: default < file < env < flag, every key parsed (values.ts), every problem collected
 * and reported at once. Never reads process.env or argv: callers (a CLI's config.ts) pass them in.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { TunnelError } from '@cluster-tunnel/protocol';
import {
  camelCaseFlag,
  type ConfigKeySpec,
  type ConfigSchema,
  type ConfigSource,
  type ConfigValues,
  type HostPort,
} from './schema.js';
import { formatHostPort, maskUrlCredentials, parseConfigValue } from './values.js';

export interface ResolveConfigInput {
  readonly env: Readonly<Record<string, string | undefined>>;
  /** commander's opts() from a command built with addConfigOptions (keys: camelCase of the flag). */
  readonly flags: Readonly<Record<string, unknown>>;
  readonly cwd: string;
  /** yaml's `parse`; injected so this package needs no YAML dependency. */
  readonly parseYaml: (text: string) => unknown;
  /** The key whose value names the YAML file (e.g. configFile ← --config). */
  readonly configKey?: string;
  /** Defaults computed at resolve time (raw values, like file values). */
  readonly computedDefaults?: Readonly<Record<string, unknown>>;
}

export interface ResolvedConfigValues<S extends ConfigSchema> {
  readonly values: ConfigValues<S>;
  readonly sources: Record<keyof S, ConfigSource>;
  /** Human origin of each key's value: 'default', 'file /etc/x.yaml', 'env X', 'flag --x'. */
  readonly origins: Record<keyof S, string>;
  readonly problems: string[];
  /** Keys whose value was rejected (cross-key checks skip them to avoid knock-on problems). */
  readonly failed: ReadonlySet<keyof S>;
}

function originText(spec: ConfigKeySpec, source: ConfigSource, filePath: string | undefined): string {
  if (source === 'flag') return `flag --${spec.flag}`;
  if (source === 'env') return `env ${spec.env}`;
  return source === 'file' ? `file ${filePath ?? ''}` : 'default';
}

/** Reads the YAML file: unknown keys, flag-only keys and unreadable files become problems. */
function readFileLayer(schema: ConfigSchema, path: string, keyOrigin: string, input: ResolveConfigInput) {
  const problems: string[] = [];
  const values: Record<string, unknown> = {};
  let doc: unknown;
  try {
    doc = input.parseYaml(readFileSync(path, 'utf8'));
  } catch (err) {
    // Never echo YAML error text: its snippet of the offending line may hold a secret.
    const e = err as { code?: unknown; linePos?: readonly { line: number; col: number }[] };
    const where = e.linePos?.[0] ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '';
    const reason =
      e.code === 'ENOENT'
        ? 'file not found'
        : typeof e.code === 'string' && !where
          ? e.code
          : `invalid YAML${where}`;
    problems.push(`${keyOrigin}: cannot load ${path}: ${reason}`);
    return { values, problems };
  }
  if (doc === null || doc === undefined) return { values, problems }; // an empty file is fine
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    problems.push(`${keyOrigin}: the top level of ${path} must be a mapping of keys to values`);
    return { values, problems };
  }
  const squash = (k: string) => k.replace(/[-_]/g, '').toLowerCase();
  for (const [key, raw] of Object.entries(doc)) {
    const spec = Object.hasOwn(schema, key) ? schema[key] : undefined;
    if (spec === undefined || spec.inFile === false) {
      const near = Object.keys(schema).find((k) => squash(k) === squash(key) && schema[k]?.inFile !== false);
      const hint = near ? `; did you mean ${near}?` : spec ? '; set it by flag or env' : '';
      problems.push(`${key} (file ${path}): unknown key${hint}`);
    } else if (raw !== null) {
      values[key] = raw; // `key:` with no value counts as unset
    }
  }
  return { values, problems };
}

/** Merges default < file < env < flag and parses every key; all problems are returned, not thrown. */
export function resolveConfigValues<S extends ConfigSchema>(
  schema: S,
  input: ResolveConfigInput,
): ResolvedConfigValues<S> {
  const problems: string[] = [];
  const flagValues: Record<string, unknown> = {};
  const envValues: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(schema)) {
    const flag = input.flags[camelCaseFlag(spec.flag)];
    if (flag !== undefined) flagValues[key] = flag;
    const env = input.env[spec.env];
    if (env !== undefined) envValues[key] = env;
  }
  let fileValues: Record<string, unknown> = {};
  let filePath: string | undefined;
  let fileFailed = false;
  const configKey = input.configKey;
  const configSpec = configKey === undefined ? undefined : schema[configKey];
  if (configKey !== undefined && configSpec !== undefined) {
    const fromFlag = flagValues[configKey] !== undefined;
    const raw = fromFlag ? flagValues[configKey] : envValues[configKey];
    if (typeof raw === 'string' && raw.trim() !== '') {
      filePath = resolve(input.cwd, raw.trim());
      const keyOrigin = `${configKey} (${originText(configSpec, fromFlag ? 'flag' : 'env', undefined)})`;
      const loaded = readFileLayer(schema, filePath, keyOrigin, input);
      fileValues = loaded.values;
      problems.push(...loaded.problems);
      fileFailed = loaded.problems.length > 0;
    }
  }
  const values: Record<string, unknown> = {};
  const sources: Record<string, ConfigSource> = {};
  const origins: Record<string, string> = {};
  const failed = new Set<string>();
  for (const [key, spec] of Object.entries(schema)) {
    const computed = input.computedDefaults?.[key];
    const layers: [ConfigSource, unknown][] = [
      ['flag', flagValues[key]],
      ['env', envValues[key]],
      ['file', fileValues[key]],
      ['default', computed !== undefined ? computed : spec.default],
    ];
    const [source, raw] = layers.find(([, v]) => v !== undefined) ?? ['default', undefined];
    sources[key] = source;
    const origin = originText(spec, source, filePath);
    origins[key] = origin;
    // Relative paths in the file are relative to the file, as in a kubeconfig.
    const baseDir = source === 'file' && filePath !== undefined ? dirname(filePath) : input.cwd;
    const parsed = parseConfigValue(raw, { spec, baseDir, source });
    if (!parsed.ok && key === configKey && fileFailed) {
      failed.add(key); // already reported by the file loader
    } else if (!parsed.ok) {
      problems.push(`${key} (${origin}): ${parsed.reason}`);
      failed.add(key);
    } else if (
      spec.required === true &&
      (parsed.value === undefined || (Array.isArray(parsed.value) && parsed.value.length === 0))
    ) {
      const where = `--${spec.flag}, ${spec.env}${spec.inFile === false ? '' : ` or ${key}: in the config file`}`;
      problems.push(`${key} (${raw === undefined ? 'not set' : origin}): required; set ${where}`);
    }
    values[key] = parsed.ok ? parsed.value : undefined;
  }
  return { values: values as ConfigValues<S>, sources, origins, problems, failed } as ResolvedConfigValues<S>;
}

/** The single error a bad configuration raises; `details.problems` lists every problem. */
export function configProblemsError(problems: readonly string[]): TunnelError {
  const n = problems.length;
  const head = `${n} configuration problem${n === 1 ? '' : 's'}:`;
  return new TunnelError('TUN_ERR_CONFIG', [head, ...problems.map((p) => `- ${p}`)].join('\n'), {
    details: { problems: [...problems] },
  });
}

export function throwIfConfigProblems(problems: readonly string[]): void {
  if (problems.length > 0) throw configProblemsError(problems);
}

export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/** A loggable copy: secrets replaced, URL credentials masked, addresses and routes as strings. */
export function redactConfig(cfg: object, schema: ConfigSchema): Record<string, unknown> {
  const loggable = (v: unknown): unknown => {
    if (typeof v === 'string') return maskUrlCredentials(v);
    if (Array.isArray(v)) return v.map(loggable);
    if (v !== null && typeof v === 'object' && 'host' in v && 'port' in v) {
      const hp = formatHostPort(v as HostPort);
      return 'name' in v ? `${String(v.name)}=${hp}` : hp;
    }
    return v;
  };
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(cfg)) {
    const secret = Object.hasOwn(schema, key) && schema[key]?.secret === true;
    out[key] = secret && value !== undefined ? '[redacted]' : loggable(value);
  }
  return out;
}
