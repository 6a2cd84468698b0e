/**
 * NO_PROXY matching, in the common dialect of curl and Go's httpproxy (there is no standard):
 *
 * | entry                       | matches                                                   |
 * |-----------------------------|-----------------------------------------------------------|
 * | `*`                         | every host                                                |
 * | `example.com`               | example.com and every subdomain (a.example.com)           |
 * | `.example.com`, `*.example.com` | the same: a leading dot or `*.` is ignored (curl)     |
 * | `10.1.2.3`, `::1`, `[::1]`  | that IP address (any spelling of it)                      |
 * | `10.0.0.0/8`, `fd00::/8`    | IP addresses in the CIDR block (Kubernetes service CIDRs) |
 * | any of the above `:port`    | only connections to that port                             |
 *
 * Host names are compared case-insensitively without a trailing dot; no DNS lookup is made, so
 * a name never matches an IP entry.
 */
import { BlockList, isIP } from 'node:net';

type Matcher = (host: string, hostIpFamily: 0 | 4 | 6, port: number) => boolean;

/** Splits `host:port`, `[v6]:port`, `[v6]` and bare `v6` into host and optional port. */
function splitPort(entry: string): { host: string; port: number | undefined } | undefined {
  if (entry.startsWith('[')) {
    const end = entry.indexOf(']');
    if (end < 0) return undefined;
    const rest = entry.slice(end + 1);
    if (rest !== '' && !/^:\d{1,5}$/.test(rest)) return undefined;
    return { host: entry.slice(1, end), port: rest === '' ? undefined : Number(rest.slice(1)) };
  }
  const colons = entry.split(':').length - 1;
  // More than one colon without brackets is a bare IPv6 address (or a v6 CIDR): no port.
  if (colons !== 1) return { host: entry, port: undefined };
  const [host = '', portText = ''] = entry.split(':');
  if (!/^\d{1,5}$/.test(portText)) return undefined;
  return { host, port: Number(portText) };
}

function family(ip: string): 'ipv4' | 'ipv6' {
  return isIP(ip) === 6 ? 'ipv6' : 'ipv4';
}

function compile(raw: string): Matcher | undefined {
  const entry = raw.trim().toLowerCase();
  if (entry === '') return undefined;
  if (entry === '*') return () => true;
  const split = splitPort(entry);
  if (split === undefined || split.host === '') return undefined;
  const { port } = split;
  const portOk = (p: number) => port === undefined || port === p;
  const host = split.host.replace(/\.$/, '');

  const slash = host.indexOf('/');
  if (slash >= 0) {
    const base = host.slice(0, slash);
    const prefix = Number(host.slice(slash + 1));
    const baseFamily = isIP(base);
    if (
      baseFamily === 0 ||
      !Number.isInteger(prefix) ||
      prefix < 0 ||
      prefix > (baseFamily === 4 ? 32 : 128)
    ) {
      return undefined;
    }
    const block = new BlockList();
    block.addSubnet(base, prefix, family(base));
    return (h, f, p) => f !== 0 && portOk(p) && block.check(h, f === 6 ? 'ipv6' : 'ipv4');
  }
  if (isIP(host) !== 0) {
    // A BlockList compares addresses, not spellings: ::1 and 0:0::1 are the same host.
    const block = new BlockList();
    block.addAddress(host, family(host));
    return (h, f, p) => f !== 0 && portOk(p) && block.check(h, f === 6 ? 'ipv6' : 'ipv4');
  }
  const domain = host.replace(/^\*?\./, '');
  if (domain === '' || domain.includes('*')) return undefined;
  return (h, f, p) => f === 0 && portOk(p) && (h === domain || h.endsWith(`.${domain}`));
}

/**
 * Whether a connection to `host:port` should bypass the egress proxy. `host` may be a name, an
 * IP address or a bracketed IPv6 address as in URL.hostname. Malformed entries match nothing.
 */
export function bypassesProxy(host: string, port: number, noProxy: readonly string[]): boolean {
  const normalized = host
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1')
    .replace(/\.$/, '');
  const hostFamily = isIP(normalized) as 0 | 4 | 6;
  for (const entry of noProxy) {
    const matcher = compile(entry);
    if (matcher?.(normalized, hostFamily, port)) return true;
  }
  return false;
}
