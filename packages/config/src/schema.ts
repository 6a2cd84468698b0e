/**
 * The configuration engine both CLIs share, in frp's manner: every key is declared once (type,
 * flag, env, default, one-line description) and that one declaration drives --help,
 * docs/CONFIG.md, parsing of the YAML file / env / flags (values.ts), resolution and validation
 * (resolve.ts) and redaction. This file holds the declarations' types; it imports nothing.
 */

/** A parsed `host-port` value. */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/**
 * A parsed `route-list` item: `name=host:port`, or, where the key allows URL targets,
 * `name=http(s)://host[:port][,option…]`: an http route (docs/CONFIG.md, "Routes").
 */
export interface RouteTarget {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  /** Set for a URL target: the route is an http route; `https` makes the agent originate TLS. */
  readonly scheme?: 'http' | 'https';
  /**
   * `mode=agent-tls` on a host:port target: the agent ends the user's TLS with a route
   * certificate and opens TLS to the target (absent: passthrough, or http for a URL target).
   */
  readonly mode?: 'agent-tls';
  /** `ca=FILE`: verify an https or agent-tls target against this CA (absolute path). */
  readonly ca?: string;
  /** `serverName=NAME`: the name an https or agent-tls target's certificate is checked for (SNI too). */
  readonly serverName?: string;
  /** `insecure`: skip verifying an https or agent-tls target (logged as a warning at start). */
  readonly insecure?: boolean;
  /** `hostHeader=NAME`: the Host header the target gets, instead of the user's. */
  readonly hostHeader?: string;
}

/** Who may use an http route (docs/CONFIG.md, "Access"). */
export const ROUTE_ACCESS_KINDS = ['link', 'basic', 'none'] as const;
export type RouteAccessKind = (typeof ROUTE_ACCESS_KINDS)[number];

/** A parsed `access-list` item: `name=link`, `name=none`, `name=basic` or `name=basic:FILE`. */
export interface RouteAccess {
  readonly name: string;
  readonly access: RouteAccessKind;
  /** basic: this route's htpasswd file (absolute); unset: the shared one. */
  readonly htpasswdFile?: string;
}

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
  | 'route-list' // name=host:port items; YAML also accepts a map name → host:port
  | 'access-list'; // name=link|none|basic[:FILE] items; YAML also accepts a map name → access

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
  /** route-list: targets may also be http(s):// URLs with options after a comma. */
  readonly urlTargets?: boolean;
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
            : K['type'] extends 'access-list'
              ? readonly RouteAccess[]
              : string;

// Lists are never undefined (empty when unset); a key with a default or `required` is always set,
// unless it can be switched off.
type Absent<K extends ConfigKeySpec> = K['type'] extends
  'string-list' | 'file-list' | 'route-list' | 'access-list'
  ? never
  : K extends { offValues: readonly string[] }
    ? undefined
    : K extends { default: unknown } | { required: true }
      ? never
      : undefined;

export type ConfigValues<S extends ConfigSchema> = {
  -readonly [P in keyof S]: BaseValue<S[P]> | Absent<S[P]>;
};

/** `log-level` → `logLevel`: the key commander gives a flag in opts(). */
export function camelCaseFlag(flag: string): string {
  return flag.replace(/-([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}
