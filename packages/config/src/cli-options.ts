/**
 * The schema as command-line options (commander), --help text and the docs/CONFIG.md table.
 * Structural types only: this package does not depend on commander.
 */
import { isListType } from './values.js';
import type { ConfigKeySpec, ConfigKeyType, ConfigSchema } from './schema.js';

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
  'access-list': '<name=access>',
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
