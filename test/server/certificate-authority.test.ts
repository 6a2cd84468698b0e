import { once } from 'node:events';
import { X509Certificate as NodeX509Certificate } from 'node:crypto';
import { readFile, stat, unlink, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { describe, expect, it, onTestFinished } from 'vitest';
import { CA_FILES, CertificateAuthority } from '../../packages/server/src/certificate-authority.js';
import { tempDir } from '../helpers/temp-dir.js';

const DAY_MS = 86_400_000;

/** A TLS server presenting `cert`; each connection answers 'ok' and closes. */
async function startTlsServer(options: tls.TlsOptions): Promise<number> {
  const server = tls.createServer(options, (socket) => {
    socket.on('error', () => {});
    socket.end('ok');
  });
  server.on('tlsClientError', () => {});
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  onTestFinished(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return (server.address() as AddressInfo).port;
}

/** Connects with full verification; resolves with what the server said or rejects with the TLS error. */
async function connectVerified(port: number, options: tls.ConnectionOptions): Promise<string> {
  const client = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: true, ...options });
  onTestFinished(() => {
    client.destroy();
  });
  await once(client, 'secureConnect');
  const chunks: Buffer[] = [];
  for await (const chunk of client) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString();
}

describe('CertificateAuthority', () => {
  it('creates a CA and server certificate on first start, with private keys readable only by the owner', async () => {
    const dataDir = tempDir();
    const ca = await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    for (const file of [CA_FILES.caKey, CA_FILES.serverKey]) {
      expect((await stat(join(dataDir, file))).mode & 0o777).toBe(0o600);
    }
    expect(await readFile(join(dataDir, CA_FILES.caCert), 'utf8')).toBe(ca.caCertPem);
    const caCert = new NodeX509Certificate(ca.caCertPem);
    const serverCert = new NodeX509Certificate(ca.serverCertPem);
    expect(caCert.ca).toBe(true);
    expect(serverCert.ca).toBe(false);
    expect(serverCert.checkIssued(caCert)).toBe(true);
    expect(serverCert.verify(caCert.publicKey)).toBe(true);
    expect(serverCert.subjectAltName).toBe(
      'DNS:proxy.localhost, DNS:*.proxy.localhost, DNS:localhost, IP Address:127.0.0.1',
    );
    expect(serverCert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  });

  it('loads the same CA and server certificate on the next start', async () => {
    const dataDir = tempDir();
    const first = await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    const second = await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    expect(second.caCertPem).toBe(first.caCertPem);
    expect(second.serverCertPem).toBe(first.serverCertPem);
    expect(second.serverKeyPem).toBe(first.serverKeyPem);
  });

  it('serves a certificate that a client trusting only the CA verifies for route names, the domain and 127.0.0.1', async () => {
    const ca = await CertificateAuthority.loadOrCreate({
      dataDir: tempDir(),
      domain: 'proxy.localhost',
    });
    const port = await startTlsServer({ key: ca.serverKeyPem, cert: ca.serverCertPem });
    const trust = { ca: ca.caCertPem };
    expect(await connectVerified(port, { ...trust, servername: 'cluster-x.proxy.localhost' })).toBe('ok');
    expect(await connectVerified(port, { ...trust, servername: 'proxy.localhost' })).toBe('ok');
    expect(await connectVerified(port, { ...trust, servername: 'localhost' })).toBe('ok');
    expect(await connectVerified(port, trust)).toBe('ok'); // host 127.0.0.1, no SNI: the IP SAN
    await expect(
      connectVerified(port, { ...trust, servername: 'cluster-x.example.com' }),
    ).rejects.toMatchObject({
      code: 'ERR_TLS_CERT_ALTNAME_INVALID',
    });
    await expect(connectVerified(port, { servername: 'proxy.localhost' })).rejects.toMatchObject({
      code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
    });
  });

  it('reissues the server certificate, under the same CA, when the domain changes', async () => {
    const dataDir = tempDir();
    const first = await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    const second = await CertificateAuthority.loadOrCreate({ dataDir, domain: 'Tunnel.Example.Com' });
    expect(second.caCertPem).toBe(first.caCertPem);
    expect(second.serverCertPem).not.toBe(first.serverCertPem);
    expect(new NodeX509Certificate(second.serverCertPem).subjectAltName).toContain(
      'DNS:*.tunnel.example.com',
    );
    const port = await startTlsServer({ key: second.serverKeyPem, cert: second.serverCertPem });
    expect(
      await connectVerified(port, { ca: first.caCertPem, servername: 'cluster-u1.tunnel.example.com' }),
    ).toBe('ok');
  });

  it('reissues a server certificate that is about to expire', async () => {
    const dataDir = tempDir();
    const startMs = Date.now();
    const first = await CertificateAuthority.loadOrCreate({
      dataDir,
      domain: 'proxy.localhost',
      now: () => startMs,
    });
    const later = await CertificateAuthority.loadOrCreate({
      dataDir,
      domain: 'proxy.localhost',
      now: () => startMs + 380 * DAY_MS,
    });
    expect(later.caCertPem).toBe(first.caCertPem);
    expect(later.serverCertPem).not.toBe(first.serverCertPem);
  });

  it('refuses to replace a CA certificate whose key is missing', async () => {
    const dataDir = tempDir();
    await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    await unlink(join(dataDir, CA_FILES.caKey));
    await expect(
      CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' }),
    ).rejects.toMatchObject({
      code: 'TUN_ERR_CONFIG',
    });
  });

  it('refuses a CA key that does not belong to the CA certificate', async () => {
    const dataDir = tempDir();
    const otherDir = tempDir();
    await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    await CertificateAuthority.loadOrCreate({ dataDir: otherDir, domain: 'proxy.localhost' });
    await writeFile(join(dataDir, CA_FILES.caKey), await readFile(join(otherDir, CA_FILES.caKey)));
    await expect(
      CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' }),
    ).rejects.toMatchObject({
      code: 'TUN_ERR_CONFIG',
    });
  });

  it('rejects an invalid domain', async () => {
    await expect(
      CertificateAuthority.loadOrCreate({ dataDir: tempDir(), domain: 'bad_domain/x' }),
    ).rejects.toMatchObject({
      code: 'TUN_ERR_CONFIG',
    });
  });
});
