/**
 * The upstream's certificate: a self-signed ECDSA P-256 certificate for the route hostname, so
 * every path carries the same TLS session (same SNI, same certificate, same cipher) from the
 * bench's TLS client to the upstream TLS server. P-256 keeps handshakes cheap, as a
 * kube-apiserver's usually are.
 */
import fs from 'node:fs';
import path from 'node:path';
import selfsigned from 'selfsigned';

export const ROUTE_HOST = 'cluster-bench.proxy.localhost';

export async function writeUpstreamCert(dir) {
  const pems = await selfsigned.generate([{ name: 'commonName', value: ROUTE_HOST }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: true },
      { name: 'keyUsage', digitalSignature: true, keyCertSign: true },
      { name: 'subjectAltName', altNames: [{ type: 2, value: ROUTE_HOST }] },
    ],
  });
  const certFile = path.join(dir, 'upstream.crt');
  const keyFile = path.join(dir, 'upstream.key');
  fs.writeFileSync(certFile, pems.cert);
  fs.writeFileSync(keyFile, pems.private, { mode: 0o600 });
  return { certFile, keyFile, certPem: pems.cert };
}
