import { once } from 'node:events';
import { webcrypto, X509Certificate as NodeX509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { Pkcs10CertificateRequestGenerator, SubjectAlternativeNameExtension } from '@peculiar/x509';
import type { JsonGeneralNames } from '@peculiar/x509';
import { describe, expect, it, onTestFinished } from 'vitest';
import { CA_FILES, CertificateAuthority } from '../../packages/server/src/certificate-authority.js';

const DAY_MS = 86_400_000;

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ct-ca-'));
  onTestFinished(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

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

const ECDSA_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const RSA_2048 = {
  name: 'RSASSA-PKCS1-v1_5',
  modulusLength: 2048,
  publicExponent: new Uint8Array([1, 0, 1]),
  hash: 'SHA-256',
} as const;

async function createCsr(
  names: JsonGeneralNames,
  algorithm: typeof ECDSA_P256 | typeof RSA_2048 = ECDSA_P256,
): Promise<{ csrPem: string; keyPem: string }> {
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const csr = await Pkcs10CertificateRequestGenerator.create({
    name: 'CN=anything the agent likes',
    keys,
    signingAlgorithm: algorithm,
    extensions: names.length > 0 ? [new SubjectAlternativeNameExtension(names)] : [],
  });
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${der.toString('base64')}\n-----END PRIVATE KEY-----\n`;
  return { csrPem: csr.toString('pem'), keyPem };
}

describe('CertificateAuthority', () => {
  it('creates a CA and server certificate on first start, with private keys readable only by the owner', async () => {
    const dataDir = await tempDir();
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
    const dataDir = await tempDir();
    const first = await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    const second = await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    expect(second.caCertPem).toBe(first.caCertPem);
    expect(second.serverCertPem).toBe(first.serverCertPem);
    expect(second.serverKeyPem).toBe(first.serverKeyPem);
  });

  it('serves a certificate that a client trusting only the CA verifies for route names, the domain and 127.0.0.1', async () => {
    const ca = await CertificateAuthority.loadOrCreate({
      dataDir: await tempDir(),
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
    const dataDir = await tempDir();
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
    const dataDir = await tempDir();
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
    const dataDir = await tempDir();
    await CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' });
    await unlink(join(dataDir, CA_FILES.caKey));
    await expect(
      CertificateAuthority.loadOrCreate({ dataDir, domain: 'proxy.localhost' }),
    ).rejects.toMatchObject({
      code: 'TUN_ERR_CONFIG',
    });
  });

  it('refuses a CA key that does not belong to the CA certificate', async () => {
    const dataDir = await tempDir();
    const otherDir = await tempDir();
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
      CertificateAuthority.loadOrCreate({ dataDir: await tempDir(), domain: 'bad_domain/x' }),
    ).rejects.toMatchObject({
      code: 'TUN_ERR_CONFIG',
    });
  });
});

describe('CertificateAuthority.signCsr', () => {
  const allowedDnsNames = ['cluster-u1.proxy.localhost', 'cluster-u1-dashboard.proxy.localhost'];

  it.each([
    ['ECDSA P-256', ECDSA_P256],
    ['RSA 2048', RSA_2048],
  ] as const)(
    'signs a %s CSR whose names are all allowed, and the certificate verifies under the CA',
    async (_, algorithm) => {
      const ca = await CertificateAuthority.loadOrCreate({
        dataDir: await tempDir(),
        domain: 'proxy.localhost',
      });
      const { csrPem, keyPem } = await createCsr(
        [{ type: 'dns', value: 'Cluster-U1.proxy.localhost' }],
        algorithm,
      );
      const certPem = await ca.signCsr(csrPem, { allowedDnsNames, validityDays: 30 });
      const cert = new NodeX509Certificate(certPem);
      expect(cert.subjectAltName).toBe('DNS:cluster-u1.proxy.localhost');
      expect(cert.subject).toBe('CN=cluster-u1.proxy.localhost'); // the CSR's own subject is ignored
      expect(new Date(cert.validTo).getTime() - Date.now()).toBeLessThanOrEqual(30 * DAY_MS);
      const port = await startTlsServer({ key: keyPem, cert: certPem });
      expect(
        await connectVerified(port, { ca: ca.caCertPem, servername: 'cluster-u1.proxy.localhost' }),
      ).toBe('ok');
      await expect(
        connectVerified(port, { ca: ca.caCertPem, servername: 'cluster-u1-dashboard.proxy.localhost' }),
      ).rejects.toMatchObject({ code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    },
  );

  it.each([
    ['a name of another cluster', [{ type: 'dns', value: 'cluster-u2.proxy.localhost' }]],
    [
      'one allowed and one foreign name',
      [
        { type: 'dns', value: 'cluster-u1.proxy.localhost' },
        { type: 'dns', value: '*.proxy.localhost' },
      ],
    ],
    ['an IP address', [{ type: 'ip', value: '127.0.0.1' }]],
    ['no name at all', []],
  ] as [string, JsonGeneralNames][])(
    'refuses a CSR asking for %s with TUN_ERR_ROUTE_FORBIDDEN',
    async (_, names) => {
      const ca = await CertificateAuthority.loadOrCreate({
        dataDir: await tempDir(),
        domain: 'proxy.localhost',
      });
      const { csrPem } = await createCsr(names);
      await expect(ca.signCsr(csrPem, { allowedDnsNames, validityDays: 30 })).rejects.toMatchObject({
        code: 'TUN_ERR_ROUTE_FORBIDDEN',
      });
    },
  );

  it('refuses a CSR that does not parse', async () => {
    const ca = await CertificateAuthority.loadOrCreate({
      dataDir: await tempDir(),
      domain: 'proxy.localhost',
    });
    await expect(ca.signCsr('not a csr', { allowedDnsNames, validityDays: 30 })).rejects.toMatchObject({
      code: 'TUN_ERR_BAD_CONTROL_MESSAGE',
    });
  });
});

describe('CertificateAuthority.issueClientCert', () => {
  it('issues a client certificate that a server requiring CA-signed clients accepts', async () => {
    const ca = await CertificateAuthority.loadOrCreate({
      dataDir: await tempDir(),
      domain: 'proxy.localhost',
    });
    const client = await ca.issueClientCert({ commonName: 'cluster:u1', validityDays: 7 });
    expect(new NodeX509Certificate(client.certPem).subject).toBe('CN=cluster:u1');
    const port = await startTlsServer({
      key: ca.serverKeyPem,
      cert: ca.serverCertPem,
      ca: ca.caCertPem,
      requestCert: true,
      rejectUnauthorized: true,
    });
    const trust = { ca: ca.caCertPem, servername: 'proxy.localhost' };
    expect(await connectVerified(port, { ...trust, key: client.keyPem, cert: client.certPem })).toBe('ok');
    await expect(connectVerified(port, trust)).rejects.toThrow(
      /certificate required|socket hang up|ECONNRESET/,
    );
  });
});
