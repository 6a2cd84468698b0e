// Test PKI: a throwaway CA that issues server and client certificates (ECDSA P-256).
// Everything is generated per call and nothing is cached globally, so tests never share keys.
import { webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import * as x509 from '@peculiar/x509';

export interface IssueOptions {
  commonName: string;
  /** Subject O= values; Kubernetes reads them as the user's groups. */
  organizations?: string[];
  dnsNames?: string[];
  ipAddresses?: string[];
  /** true: clientAuth only; false/absent: serverAuth and clientAuth. */
  client?: boolean;
  validityDays?: number;
}

export interface IssuedCert {
  certPem: string;
  keyPem: string;
}

export interface TestCa extends IssuedCert {
  issue(options: IssueOptions): Promise<IssuedCert>;
}

// The library types its provider as the DOM `Crypto`; Node's webcrypto implements it.
const crypto = webcrypto as unknown as NonNullable<
  Parameters<typeof x509.X509CertificateGenerator.create>[1]
>;
const keyAlgorithm = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const signingAlgorithm = { name: 'ECDSA', hash: 'SHA-256' } as const;
const dayMs = 24 * 60 * 60 * 1000;
// Backdate a little so a peer whose clock is slightly behind still accepts the certificate.
const clockSkewMs = 5 * 60 * 1000;

function generateKeys(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(keyAlgorithm, true, ['sign', 'verify']);
}

async function privateKeyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

// A positive, non-zero 128-bit serial: Go (kubectl) rejects negative serial numbers.
function serialNumber(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x40;
  return Buffer.from(bytes).toString('hex');
}

function subjectName(commonName: string, organizations: string[] = []): x509.JsonName {
  // One RDN per organization, as kubeadm and cfssl write them (not one multi-valued RDN).
  return [{ CN: [commonName] }, ...organizations.map((o) => ({ O: [o] }))];
}

function validity(days: number): { notBefore: Date; notAfter: Date } {
  const now = Date.now();
  return { notBefore: new Date(now - clockSkewMs), notAfter: new Date(now + days * dayMs) };
}

/** Creates a self-signed CA. `issue` signs leaf certificates with it. */
export async function createTestCa(name: string): Promise<TestCa> {
  const caKeys = await generateKeys();
  const caName = subjectName(name);
  const caCert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serialNumber(),
      name: caName,
      keys: caKeys,
      signingAlgorithm,
      ...validity(365),
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey, false, crypto),
      ],
    },
    crypto,
  );

  async function issue(options: IssueOptions): Promise<IssuedCert> {
    const keys = await generateKeys();
    const sans: x509.JsonGeneralName[] = [
      ...(options.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
      ...(options.ipAddresses ?? []).map((value) => {
        if (isIP(value) === 0) throw new Error(`not an IP address: ${value}`);
        return { type: 'ip' as const, value };
      }),
    ];
    const usages = options.client
      ? [x509.ExtendedKeyUsage.clientAuth]
      : [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
    const extensions: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(usages, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey, false, crypto),
    ];
    if (sans.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(sans, false));
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: serialNumber(),
        subject: subjectName(options.commonName, options.organizations),
        issuer: caCert.subject,
        publicKey: keys.publicKey,
        signingKey: caKeys.privateKey,
        signingAlgorithm,
        ...validity(options.validityDays ?? 30),
        extensions,
      },
      crypto,
    );
    return { certPem: cert.toString('pem'), keyPem: await privateKeyPem(keys.privateKey) };
  }

  return { certPem: caCert.toString('pem'), keyPem: await privateKeyPem(caKeys.privateKey), issue };
}
