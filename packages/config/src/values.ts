/**
 * Value parsing for the configuration engine (schema.ts, resolve.ts): one raw value from any source
 * (YAML scalar or list, env string, flag string or repeated flag) → a typed value or a reason.
 * Reasons never echo a secret key's value.
 */
import { statSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import { ROUTE_NAME_PATTERN } from '@cluster-tunnel/protocol';
import { ROUTE_ACCESS_KINDS } from './schema.js';
import type {
  ConfigKeySpec,
  ConfigKeyType,
  ConfigSource,
  HostPort,
  RouteAccess,
  RouteAccessKind,
  RouteTarget,
} from './schema.js';

export const MAX_TIMER_MS = 2_147_483_647; // setTimeout's ceiling: larger delays fire at once

// ---------------------------------------------------------------------------------------------
// Scalar parsers (exported for reuse, e.g. a `--ttl` flag): undefined means "invalid".

const DURATION_UNITS_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;

export function parseDurationMs(input: string | number): number | undefined {
  if (typeof input === 'number') return Number.isSafeInteger(input) && input >= 0 ? input : undefined;
  const text = input.trim();
  if (/^\d+$/.test(text)) return parseDurationMs(Number(text));
  const part = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;
  let total = 0;
  let at = 0;
  while (at < text.length) {
    part.lastIndex = at;
    const m = part.exec(text);
    if (m === null) return undefined;
    total += Number(m[1]) * DURATION_UNITS_MS[m[2] as keyof typeof DURATION_UNITS_MS];
    at = part.lastIndex;
  }
  const ms = Math.round(total);
  // '1.5s' is fine, '0.5ms' is not: the result must be whole milliseconds.
  return text !== '' && Math.abs(total - ms) < 1e-6 && Number.isSafeInteger(ms) ? ms : undefined;
}

export function isDnsName(name: string): boolean {
  const labels = name.split('.');
  return (
    name.length <= 253 &&
    labels.every((label) => /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(label)) &&
    !/^\d+$/.test(labels[labels.length - 1] ?? '')
  );
}

/** 'host:port' or '[v6]:port'; returns a reason string when invalid. */
export function parseHostPort(text: string, minPort = 1): HostPort | string {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0 || text[end + 1] !== ':') return 'expected [ipv6]:port';
    host = text.slice(1, end);
    if (isIP(host) !== 6) return 'the bracketed host is not an IPv6 address';
    portText = text.slice(end + 2);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return 'expected host:port (the port is missing)';
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return 'IPv6 addresses need brackets: [::1]:port';
    if (host === '') return 'the host is empty (use 0.0.0.0:port for all interfaces)';
    if (isIP(host) === 0 && !isDnsName(host)) return 'the host is neither an IP address nor a DNS name';
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= minPort && port <= 65535)) return `the port must be an integer from ${minPort} to 65535`;
  return { host: host.toLowerCase(), port };
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** 'name=host:port' → RouteTarget, or a reason string. `namePattern` constrains the name. */
export function parseRoute(
  name: string,
  target: string,
  namePattern = ROUTE_NAME_PATTERN,
  minPort = 1,
): RouteTarget | string {
  if (!namePattern.test(name)) return `route name ${JSON.stringify(name)} must match ${namePattern}`;
  const hp = parseHostPort(target.trim(), minPort);
  return typeof hp === 'string' ? `route ${name}: ${hp}` : { name, ...hp };
}

/** Options a route target may carry after a comma; their names can never be route names. */
export const ROUTE_OPTIONS = ['mode', 'ca', 'serverName', 'insecure', 'hostHeader'] as const;
const OPTION_KEY = /^(mode|ca|servername|insecure|hostheader)(=|$)/i;
/** The modes a host:port route may name (a URL target is always an http route). */
export const HOST_PORT_ROUTE_MODES = ['passthrough', 'agent-tls'] as const;

type MutableRoute = { -readonly [K in keyof RouteTarget]: RouteTarget[K] };

/**
 * Applies `ca=FILE`, `serverName=NAME` and `insecure` to `route`; true when `option` was one of
 * them and well formed.
 */
function applyTlsOption(
  route: MutableRoute,
  key: string,
  value: string | undefined,
  baseDir: string,
): boolean {
  if (key === 'insecure' && value === undefined) route.insecure = true;
  else if (key === 'ca' && value) route.ca = resolve(baseDir, value);
  else if (key === 'servername' && value && isDnsName(value.toLowerCase()))
    route.serverName = value.toLowerCase();
  else return false;
  return true;
}

function splitOption(option: string): { key: string; value: string | undefined } {
  const eq = option.indexOf('=');
  return {
    key: (eq < 0 ? option : option.slice(0, eq)).trim().toLowerCase(),
    value: eq < 0 ? undefined : option.slice(eq + 1).trim(),
  };
}

/**
 * `name=host:port` plus options: `mode=agent-tls` (then `ca=FILE`, `serverName=NAME`,
 * `insecure` say how the agent verifies the target), or `mode=passthrough`, the default.
 */
export function parseHostPortRoute(
  name: string,
  target: string,
  options: readonly string[],
  baseDir: string,
  namePattern = ROUTE_NAME_PATTERN,
): RouteTarget | string {
  const parsed = parseRoute(name, target, namePattern);
  if (typeof parsed === 'string' || options.length === 0) return parsed;
  const route: MutableRoute = { ...parsed };
  let mode: string | undefined;
  const tlsOptions: string[] = [];
  for (const option of options) {
    const { key, value } = splitOption(option);
    if (
      key === 'mode' &&
      value !== undefined &&
      (HOST_PORT_ROUTE_MODES as readonly string[]).includes(value)
    ) {
      mode = value;
    } else if (applyTlsOption(route, key, value, baseDir)) tlsOptions.push(key);
    else if (key === 'mode') {
      return `route ${name}: mode must be ${HOST_PORT_ROUTE_MODES.join(' or ')} (an http route is a URL target), got ${JSON.stringify(value ?? '')}`;
    } else {
      return `route ${name}: option ${JSON.stringify(option)} is not one of mode=agent-tls, ca=FILE, serverName=NAME, insecure`;
    }
  }
  if (mode !== 'agent-tls' && tlsOptions.length > 0) {
    return `route ${name}: ca, serverName and insecure apply to https targets and mode=agent-tls only`;
  }
  if (route.insecure && route.ca) return `route ${name}: insecure and ca contradict each other`;
  if (mode === 'agent-tls') route.mode = 'agent-tls';
  return route;
}

/**
 * `name=http(s)://host[:port]` plus options (`ca=FILE`, `serverName=NAME`, `insecure`,
 * `hostHeader=NAME`): an http route. A path other than `/` is refused: the route is a whole
 * origin. Relative `ca` paths resolve against `baseDir`.
 */
export function parseUrlRoute(
  name: string,
  target: string,
  options: readonly string[],
  baseDir: string,
  namePattern = ROUTE_NAME_PATTERN,
): RouteTarget | string {
  if (!namePattern.test(name)) return `route name ${JSON.stringify(name)} must match ${namePattern}`;
  let url: URL;
  try {
    url = new URL(target.trim());
  } catch {
    return `route ${name}: ${JSON.stringify(target)} is not a URL`;
  }
  const scheme = url.protocol.slice(0, -1);
  if (scheme !== 'http' && scheme !== 'https') return `route ${name}: the scheme must be http or https`;
  if (url.username || url.password) return `route ${name}: the target URL may not carry credentials`;
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) {
    return `route ${name}: the target is an origin (scheme://host:port), without a path or query`;
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = url.port === '' ? (scheme === 'https' ? 443 : 80) : Number(url.port);
  const route: MutableRoute = { name, host, port, scheme };
  for (const option of options) {
    const { key, value } = splitOption(option);
    if (applyTlsOption(route, key, value, baseDir)) continue;
    if (key === 'hostheader' && value && /^[A-Za-z0-9.:[\]-]{1,255}$/.test(value)) route.hostHeader = value;
    else if (key === 'mode' && value === 'http') continue;
    else if (key === 'mode') {
      return `route ${name}: a URL target is an http route; mode=${value ?? ''} applies to host:port targets`;
    } else {
      return `route ${name}: option ${JSON.stringify(option)} is not one of ca=FILE, serverName=NAME, insecure, hostHeader=NAME`;
    }
  }
  if (scheme === 'http' && (route.ca || route.serverName || route.insecure)) {
    return `route ${name}: ca, serverName and insecure apply to https targets only`;
  }
  if (route.insecure && route.ca) return `route ${name}: insecure and ca contradict each other`;
  return route;
}

// ---------------------------------------------------------------------------------------------
// Typed value parsing: one raw value (from any source) → a typed value or a reason.

export interface ParseContext {
  readonly spec: ConfigKeySpec;
  readonly baseDir: string;
  readonly source: ConfigSource;
}

export type Parsed =
  { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly reason: string };
const ok = (value: unknown): Parsed => ({ ok: true, value });
const bad = (reason: string): Parsed => ({ ok: false, reason });

export function maskUrlCredentials(text: string): string {
  return text.replace(/\/\/[^/@\s]*@/g, '//***@');
}

function show(raw: unknown, spec: ConfigKeySpec): string {
  if (spec.secret === true) return 'a value (not shown: secret)';
  const text = maskUrlCredentials(
    typeof raw === 'string' ? JSON.stringify(raw) : (JSON.stringify(raw) ?? String(raw)),
  );
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function inRange(n: number, spec: ConfigKeySpec, unit = ''): string | undefined {
  if (spec.min !== undefined && n < spec.min) return `must be at least ${spec.min}${unit}`;
  if (spec.max !== undefined && n > spec.max) return `must be at most ${spec.max}${unit}`;
  return undefined;
}

function checkFile(path: string, ctx: ParseContext): string | undefined {
  // Defaults name files the server creates on first start; only what the user named must exist.
  if (ctx.spec.mustExist === false || ctx.source === 'default') return undefined;
  try {
    return statSync(path).isFile() ? undefined : `${path} is not a regular file`;
  } catch {
    return `file not found: ${path}`;
  }
}

function parseScalar(raw: unknown, ctx: ParseContext): Parsed {
  const { spec } = ctx;
  const got = `got ${show(raw, spec)}`;
  if (typeof raw === 'number' && (spec.type === 'int' || spec.type === 'duration-ms')) {
    return parseScalar(String(raw), ctx);
  }
  if (typeof raw === 'boolean' && spec.type === 'bool') return ok(raw);
  if (raw === false && spec.offValues) return ok(undefined); // YAML `adminListen: false`
  if (typeof raw === 'number' && spec.type === 'string') raw = String(raw);
  if (typeof raw !== 'string') return bad(`expected a ${spec.type === 'int' ? 'number' : 'string'}, ${got}`);
  const text = raw.trim();
  if (text === '' || spec.offValues?.includes(text)) {
    if (spec.offValues?.includes(text)) return ok(undefined);
    // An empty optional value unsets it (so env can clear a file value); a defaulted one is a mistake.
    return spec.default === undefined && spec.required !== true ? ok(undefined) : bad('must not be empty');
  }
  switch (spec.type) {
    case 'string':
      return spec.pattern && !spec.pattern.test(text) ? bad(`must match ${spec.pattern}, ${got}`) : ok(text);
    case 'int': {
      if (!/^\+?\d+$/.test(text) || !Number.isSafeInteger(Number(text)))
        return bad(`expected an integer, ${got}`);
      const n = Number(text);
      const range = inRange(n, spec);
      return range === undefined ? ok(n) : bad(`${range}, ${got}`);
    }
    case 'duration-ms': {
      const ms = parseDurationMs(text);
      if (ms === undefined)
        return bad(`expected a duration (500ms, 10s, 30m, 8760h or whole milliseconds), ${got}`);
      const range = inRange(ms, spec, 'ms');
      return range === undefined ? ok(ms) : bad(`${range}, ${got}`);
    }
    case 'bool': {
      const lower = text.toLowerCase();
      if (['true', 'yes', 'on', '1'].includes(lower)) return ok(true);
      if (['false', 'no', 'off', '0'].includes(lower)) return ok(false);
      return bad(`expected true or false, ${got}`);
    }
    case 'enum':
      return spec.values?.includes(text)
        ? ok(text)
        : bad(`expected one of ${spec.values?.join(', ')}, ${got}`);
    case 'host-port': {
      const hp = parseHostPort(text, spec.min ?? 0);
      const off = spec.offValues
        ? ` (or ${spec.offValues.map((v) => JSON.stringify(v)).join(' / ')} to disable)`
        : '';
      return typeof hp === 'string' ? bad(`${hp}${off}, ${got}`) : ok(hp);
    }
    case 'dns-name': {
      const name = text.toLowerCase().replace(/\.$/, '');
      return isDnsName(name) ? ok(name) : bad(`expected a DNS name like proxy.example.com, ${got}`);
    }
    case 'url': {
      let url: URL;
      try {
        url = new URL(text);
      } catch {
        return bad(`expected a URL, ${got}`);
      }
      if (spec.protocols && !spec.protocols.includes(url.protocol)) {
        return bad(
          `the scheme must be ${spec.protocols.map((p) => p.replace(/:$/, '')).join(' or ')}, ${got}`,
        );
      }
      return ok(url.href);
    }
    case 'file': {
      const path = resolve(ctx.baseDir, text);
      const problem = checkFile(path, ctx);
      return problem === undefined ? ok(path) : bad(problem);
    }
    case 'path':
      return ok(resolve(ctx.baseDir, text));
    default:
      return bad(`internal: ${spec.type} is not a scalar type`);
  }
}

/** `{ target, mode, ca, serverName, insecure, hostHeader }` → the one-line form; anything else stays as is. */
function routeFromYamlObject(name: string, value: unknown): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  const o = value as Record<string, unknown>;
  if (typeof o.target !== 'string') return value;
  const parts = [`${name}=${o.target}`];
  for (const [key, v] of Object.entries(o)) {
    if (key === 'target') continue;
    if (v === true && key === 'insecure') parts.push('insecure');
    else if (typeof v === 'string') parts.push(`${key}=${v}`);
    else return value;
  }
  return parts.join(',');
}

function listItems(raw: unknown, spec: ConfigKeySpec): string[] | string {
  const parts = Array.isArray(raw) ? raw : [raw];
  const items: string[] = [];
  for (const part of parts) {
    if (typeof part !== 'string') return `expected a list of strings, got ${show(part, spec)}`;
    items.push(
      ...part
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== ''),
    );
  }
  return items;
}

function parseList(raw: unknown, ctx: ParseContext): Parsed {
  const { spec } = ctx;
  if (spec.type === 'route-list' && raw !== null && typeof raw === 'object' && !Array.isArray(raw)) {
    // YAML map form: { apiserver: 'kubernetes.default.svc:443' }, or with options as keys:
    // { dashboard: { target: 'https://…', ca: ca.pem, insecure: true } }.
    raw = Object.entries(raw).map(([name, target]) =>
      typeof target === 'string' ? `${name}=${target}` : routeFromYamlObject(name, target),
    );
  }
  if (spec.type === 'access-list' && raw !== null && typeof raw === 'object' && !Array.isArray(raw)) {
    // YAML map form: { cluster-u1-dash: basic:htpasswd, cluster-u1-docs: none }.
    raw = Object.entries(raw).map(([name, access]) =>
      typeof access === 'string' ? `${name}=${access}` : access,
    );
  }
  const items = listItems(raw, spec);
  if (typeof items === 'string') return bad(items);
  if (spec.type === 'string-list') return ok(items);
  if (spec.type === 'access-list') {
    const accesses: RouteAccess[] = [];
    const reasons: string[] = [];
    for (const item of items) {
      const access = parseAccess(item, ctx);
      if (typeof access === 'string') reasons.push(access);
      else if (accesses.some((a) => a.name === access.name))
        reasons.push(`route name ${access.name} is used twice`);
      else accesses.push(access);
    }
    return reasons.length === 0 ? ok(accesses) : bad(reasons.join('; '));
  }
  if (spec.type === 'file-list') {
    const paths = items.map((item) => resolve(ctx.baseDir, item));
    const problems = paths.map((p) => checkFile(p, ctx)).filter((p) => p !== undefined);
    return problems.length === 0 ? ok(paths) : bad(problems.join('; '));
  }
  const routes: RouteTarget[] = [];
  const reasons: string[] = [];
  // Comma-separated items: an option (`ca=…`, `insecure`) belongs to the route before it.
  const grouped: { item: string; options: string[] }[] = [];
  for (const item of items) {
    const last = grouped.at(-1);
    if (spec.urlTargets && last && OPTION_KEY.test(item)) last.options.push(item);
    else grouped.push({ item, options: [] });
  }
  for (const { item, options } of grouped) {
    const eq = item.indexOf('=');
    const name = item.slice(0, eq).trim();
    const target = item.slice(eq + 1).trim();
    const route =
      eq < 0
        ? `expected name=host:port, got ${show(item, spec)}`
        : spec.urlTargets && OPTION_KEY.test(name)
          ? `${name} is a route option, not a route name (options follow a URL target)`
          : spec.urlTargets && /^[a-z][a-z0-9+.-]*:\/\//i.test(target)
            ? parseUrlRoute(name, target, options, ctx.baseDir, spec.pattern)
            : spec.urlTargets
              ? parseHostPortRoute(name, target, options, ctx.baseDir, spec.pattern)
              : parseRoute(name, target, spec.pattern, spec.min ?? 1);
    const caProblem = typeof route !== 'string' && route.ca ? checkFile(route.ca, ctx) : undefined;
    if (typeof route === 'string') reasons.push(route);
    else if (caProblem !== undefined) reasons.push(`route ${route.name}: ca: ${caProblem}`);
    else if (routes.some((r) => r.name === route.name))
      reasons.push(`route name ${route.name} is used twice`);
    else routes.push(route);
  }
  return reasons.length === 0 ? ok(routes) : bad(reasons.join('; '));
}

export function isListType(type: ConfigKeyType): boolean {
  return type === 'string-list' || type === 'file-list' || type === 'route-list' || type === 'access-list';
}

/** `name=link`, `name=none`, `name=basic` or `name=basic:FILE` (relative to `ctx.baseDir`). */
function parseAccess(item: string, ctx: ParseContext): RouteAccess | string {
  const eq = item.indexOf('=');
  if (eq < 0) return `expected name=link, name=basic[:FILE] or name=none, got ${show(item, ctx.spec)}`;
  const name = item.slice(0, eq).trim();
  const value = item.slice(eq + 1).trim();
  const pattern = ctx.spec.pattern ?? ROUTE_NAME_PATTERN;
  if (!pattern.test(name)) return `route name ${JSON.stringify(name)} must match ${pattern}`;
  const colon = value.indexOf(':');
  const kind = colon < 0 ? value : value.slice(0, colon);
  if (!(ROUTE_ACCESS_KINDS as readonly string[]).includes(kind)) {
    return `route ${name}: access must be link, basic, basic:FILE or none, got ${JSON.stringify(value)}`;
  }
  if (colon < 0) return { name, access: kind as RouteAccessKind };
  if (kind !== 'basic') return `route ${name}: only basic takes a file (basic:FILE)`;
  const file = resolve(ctx.baseDir, value.slice(colon + 1).trim());
  const problem = checkFile(file, ctx);
  return problem === undefined ? { name, access: 'basic', htpasswdFile: file } : `route ${name}: ${problem}`;
}

/** Parses one raw value of a key; `raw === undefined` means "not set" (lists become []). */
export function parseConfigValue(raw: unknown, ctx: ParseContext): Parsed {
  if (isListType(ctx.spec.type)) return raw === undefined ? ok([]) : parseList(raw, ctx);
  return raw === undefined ? ok(undefined) : parseScalar(raw, ctx);
}
