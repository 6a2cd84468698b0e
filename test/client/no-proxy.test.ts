// NO_PROXY matching: which server addresses bypass the egress proxy.
import { describe, expect, test } from 'vitest';
import { bypassesProxy } from '../../packages/client/src/no-proxy.js';

const table: Array<[entries: string, host: string, port: number, bypass: boolean]> = [
  // nothing configured
  ['', 'tunnel.example.com', 443, false],
  // wildcard
  ['*', 'tunnel.example.com', 443, true],
  ['*', '10.0.0.1', 8443, true],
  // exact host, case-insensitive, trailing dot ignored
  ['tunnel.example.com', 'tunnel.example.com', 443, true],
  ['Tunnel.Example.COM', 'tunnel.example.com', 443, true],
  ['tunnel.example.com', 'TUNNEL.example.com.', 443, true],
  ['tunnel.example.com', 'other.example.com', 443, false],
  // a bare domain covers its subdomains, never a mere suffix of a label
  ['example.com', 'tunnel.example.com', 443, true],
  ['example.com', 'a.b.example.com', 443, true],
  ['example.com', 'badexample.com', 443, false],
  ['example.com', 'example.com.evil.net', 443, false],
  // leading dot and *. mean the same as the bare domain (curl)
  ['.example.com', 'tunnel.example.com', 443, true],
  ['.example.com', 'example.com', 443, true],
  ['*.example.com', 'tunnel.example.com', 443, true],
  ['.example.com', 'notexample.com', 443, false],
  // ports
  ['tunnel.example.com:443', 'tunnel.example.com', 443, true],
  ['tunnel.example.com:8443', 'tunnel.example.com', 443, false],
  ['.svc:443', 'tunnel.ns.svc', 443, true],
  // IPv4
  ['127.0.0.1', '127.0.0.1', 8443, true],
  ['127.0.0.1', '127.0.0.2', 8443, false],
  ['127.0.0.1:8443', '127.0.0.1', 8443, true],
  ['127.0.0.1:9443', '127.0.0.1', 8443, false],
  // IPv6, bracketed or bare, any spelling
  ['::1', '[::1]', 443, true],
  ['[::1]', '::1', 443, true],
  ['[0:0::1]:443', '[::1]', 443, true],
  ['[::1]:80', '[::1]', 443, false],
  ['::1', '[::2]', 443, false],
  // CIDR blocks (Kubernetes service and pod ranges)
  ['10.0.0.0/8', '10.96.0.1', 443, true],
  ['10.0.0.0/8', '11.0.0.1', 443, false],
  ['192.168.0.0/16:443', '192.168.3.4', 443, true],
  ['192.168.0.0/16:443', '192.168.3.4', 80, false],
  ['fd00::/8', '[fd12::1]', 443, true],
  ['fd00::/8', '[fe80::1]', 443, false],
  // names never match IP entries, and IPs never match name entries (no DNS lookups)
  ['127.0.0.1', 'localhost', 443, false],
  ['localhost', '127.0.0.1', 443, false],
  ['10.0.0.0/8', 'ten.example.com', 443, false],
  // lists: any entry may match, whitespace and empties are tolerated
  [' internal.corp , .svc ,, 10.0.0.0/8 ', 'api.default.svc', 443, true],
  ['internal.corp,.svc', 'tunnel.example.com', 443, false],
  // malformed entries match nothing
  ['[::1', '::1', 443, false],
  ['host:port', 'host', 443, false],
  ['10.0.0.0/99', '10.0.0.1', 443, false],
  ['a.*.com', 'a.b.com', 443, false],
];

describe('bypassesProxy', () => {
  test.each(table)('NO_PROXY=%j, %s:%i → bypass %s', (entries, host, port, bypass) => {
    expect(bypassesProxy(host, port, entries.split(','))).toBe(bypass);
  });
});
