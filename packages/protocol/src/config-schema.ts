/**
 * The configuration engine both CLIs share, in frp's manner: every key is declared once (type,
 * flag, env, default, one-line description) and that one declaration drives --help,
 * docs/CONFIG.md, parsing of the YAML file / env / flags, validation and redaction.
 * Precedence: default < file < env < flag. Problems are collected, never thrown one by one.
 * This module never reads process.env or argv: callers (config.ts) pass them in.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { HostPort, RouteTarget } from './config-values.js';
import { formatHostPort, isListType, maskUrlCredentials, parseConfigValue } from './config-values.js';
import { TunnelError } from './errors.js';

export {
  MAX_TIMER_MS,
  formatHostPort,
  isDnsName,
  parseDurationMs,
  parseHostPort,
  parseRoute,
} from './config-values.js';
export type { HostPort, RouteTarget } from './config-values.js';

/** Lowest to highest precedence. */
export const CONFIG_SOURCES = ['default', 'file', 'env', 'flag'] as const;
export type ConfigSource = (typeof CONFIG_SOURCES)[number];

/** Shared by both CLIs (pino's levels and output formats). */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['json', 'pretty'] as const;

/** What a CLI's config resolver reads: argv or parsed flags, env, the working directory. */
export interface CliConfigInput {
  /** Options only (no subcommand); parsed against the schema. */
  readonly argv?: readonly string[];
  /** Or: opts() of a commander Command built with addConfigOptions(cmd, schema). */
  readonly flags?: Readonly<Record<string, unknown>>;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Relative paths from flags and env resolve against it (from the file: against the file). */
  readonly cwd?: string;
  /** Injected by tests; defaults to os.hostname(). */
  readonly hostname?: string;
}

/** The logLevel and logFormat keys every CLI has, with its env prefix (e.g. TUNNEL_SERVER_). */
export function logConfigKeys<P extends string>(envPrefix: P) {
  return {
    logLevel: {
      type: 'enum',
      flag: 'log-level',
      env: `${envPrefix}LOG_LEVEL`,
      values: LOG_LEVELS,
      default: 'info',
      description: 'least severe log level written',
    },
    logFormat: {
      type: 'enum',
      flag: 'log-format',
      env: `${envPrefix}LOG_FORMAT`,
      values: LOG_FORMATS,
      default: 'json',
      description: 'json lines, or pretty for people at a terminal',
    },
  } as const;
}
export type LogFormat = (typeof LOG_FORMATS)[number];

export type ConfigKeyType =
  | 'string' // pattern? constrains it (route-list: the names)
  | 'int' // min/max
  | 'duration-ms' // 250 | '250ms' | '10s' | '30m' | '8760h' | '1h30m' → integer milliseconds
  | 'bool' // true/false/yes/no/on/off/1/0
  | 'enum' // one of values
  | 'host-port' // host:port or [v6]:port → { host, port }; offValues disable it (→ undefined)
  | 'dns-name' // lower-cased, trailing dot dropped
  | 'url' // protocols? restricts the scheme
  | 'file' // resolved path; must exist unless mustExist: false (only user-given values are checked)
  | 'path' // resolved path, need not exist
  | 'string-list' // comma-separated in env, repeatable flag, YAML list
  | 'file-list'
  | 'route-list'; // name=host:port items; YAML also accepts a map name → host:port

export interface ConfigKeySpec {
  readonly type: ConfigKeyType;
  /** kebab-case, without the leading `--`. */
  readonly flag: string;
  readonly env: string;
  /** One line; --help and docs/CONFIG.md show it verbatim (a test compares them). */
  readonly description: string;
  /** Raw value, parsed exactly like a file value. */
  readonly default?: string | number | boolean | readonly string[];
  /** For defaults computed at resolve time (hostname, paths under dataDir). */
  readonly defaultText?: string;
  readonly required?: boolean;
  /** Never echoed in problems, replaced in redactConfig. */
  readonly secret?: boolean;
  readonly values?: readonly string[];
  readonly min?: number;
  readonly max?: number;
  readonly offValues?: readonly string[];
  readonly protocols?: readonly string[];
  readonly mustExist?: boolean;
  readonly pattern?: RegExp;
  /** false: flag/env only (the --config key itself). */
  readonly inFile?: boolean;
}

export type ConfigSchema = Readonly<Record<string, ConfigKeySpec>>;

type BaseValue<K extends ConfigKeySpec> = K['type'] extends 'int' | 'duration-ms'
  ? number
  : K['type'] extends 'bool'
    ? boolean
    : K['type'] extends 'enum'
      ? K extends { values: readonly (infer V)[] }
        ? V
        : string
      : K['type'] extends 'host-port'
        ? HostPort
        : K['type'] extends 'string-list' | 'file-list'
          ? readonly string[]
          : K['type'] extends 'route-list'
            ? readonly RouteTarget[]
            : string;

// Lists are never undefined (empty when unset); a key with a default or `required` is always set,
// unless it can be switched off.
type Absent<K extends ConfigKeySpec> = K['type'] extends 'string-list' | 'file-list' | 'route-list'
  ? never
  : K extends { offValues: readonly string[] }
    ? undefined
    : K extends { default: unknown } | { required: true }
      ? never
      : undefined;

export type ConfigValues<S extends ConfigSchema> = {
  -readonly [P in keyof S]: BaseValue<S[P]> | Absent<S[P]>;
};

// ---------------------------------------------------------------------------------------------
// Layers and precedence.

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

export function camelCaseFlag(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
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

// ---------------------------------------------------------------------------------------------
// commander, --help and docs.

/** The slice of commander's Command used here (structural: this package does not depend on it). */
export interface OptionHost {
  option(
    flags: string,
    description: string,
    parseArg: (value: string, previous: unknown) => unknown,
  ): unknown;
}

export interface ArgvCommand extends OptionHost {
  exitOverride(): unknown;
  configureOutput(output: { writeOut(str: string): void; writeErr(str: string): void }): unknown;
  parseOptions(argv: string[]): { operands: string[]; unknown: string[] };
  opts(): Record<string, unknown>;
}

const PLACEHOLDERS: Record<ConfigKeyType, string> = {
  string: '<string>',
  int: '<n>',
  'duration-ms': '<duration>',
  bool: '[bool]',
  enum: '<value>',
  'host-port': '<host:port>',
  'dns-name': '<name>',
  url: '<url>',
  file: '<file>',
  path: '<dir>',
  'string-list': '<value>',
  'file-list': '<file>',
  'route-list': '<name=host:port>',
};

export interface ConfigKeyDoc {
  readonly key: string;
  readonly flag: string; // '--listen'
  readonly env: string;
  readonly type: ConfigKeyType;
  /** As shown in --help and docs; undefined when there is none. */
  readonly default: string | undefined;
  readonly description: string;
  readonly required: boolean;
  readonly secret: boolean;
}

export function describeConfig(schema: ConfigSchema): ConfigKeyDoc[] {
  return Object.entries(schema).map(([key, spec]) => {
    const raw = spec.default;
    const shown = raw === undefined ? undefined : Array.isArray(raw) ? raw.join(',') : String(raw);
    return {
      key,
      flag: `--${spec.flag}`,
      env: spec.env,
      type: spec.type,
      default: spec.defaultText ?? shown,
      description: spec.description,
      required: spec.required === true,
      secret: spec.secret === true,
    };
  });
}

/** The docs/CONFIG.md table for a schema (the docs test parses these rows back). */
export function configTableMarkdown(schema: ConfigSchema): string {
  const rows = describeConfig(schema).map((d) => {
    const dflt =
      d.default === undefined
        ? d.required
          ? 'required'
          : '—'
        : `\`${d.default === '' ? '""' : d.default}\``;
    return `| \`${d.key}\` | \`${d.flag}\` | \`${d.env}\` | ${dflt} | ${d.description} |`;
  });
  return ['| key | flag | env | default | description |', '|---|---|---|---|---|', ...rows].join('\n');
}

export function addConfigOptions(cmd: OptionHost, schema: ConfigSchema): void {
  for (const d of describeConfig(schema)) {
    const spec = schema[d.key] as ConfigKeySpec;
    const list = isListType(spec.type);
    const extra = [
      spec.type === 'enum' ? `one of ${spec.values?.join('|')}` : undefined,
      list ? 'repeatable or comma-separated' : undefined,
      `env ${d.env}`,
      d.default !== undefined
        ? `default: ${d.default === '' ? '""' : d.default}`
        : d.required
          ? 'required'
          : undefined,
    ].filter((s) => s !== undefined);
    // No commander default: an absent flag must not hide the file and env layers below it.
    const collect = (value: string, previous: unknown) =>
      list ? [...(Array.isArray(previous) ? previous : []), value] : value;
    cmd.option(
      `--${spec.flag} ${PLACEHOLDERS[spec.type]}`,
      `${d.description} (${extra.join('; ')})`,
      collect,
    );
  }
}

/** Parses argv (options only, no subcommand) with a fresh commander Command; errors become problems. */
export function flagsFromArgv(cmd: ArgvCommand, schema: ConfigSchema, argv: readonly string[]) {
  const problems: string[] = [];
  cmd.exitOverride();
  cmd.configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
  addConfigOptions(cmd, schema);
  try {
    const { operands, unknown } = cmd.parseOptions([...argv]);
    // Report flag names only: the word after an unknown flag may be a secret.
    for (const arg of unknown)
      if (arg.startsWith('-')) problems.push(`${arg.replace(/=.*$/s, '')} (flag): unknown flag`);
    if (operands.length > 0)
      problems.push(`argv (flag): ${operands.length} unexpected positional argument(s)`);
  } catch (err) {
    problems.push(`argv (flag): ${String((err as Error).message).replace(/^error: /, '')}`);
  }
  return { flags: cmd.opts(), problems };
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
