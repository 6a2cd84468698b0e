import { createPrivateKey, createPublicKey, randomBytes, webcrypto } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  ExtendedKeyUsage,
  ExtendedKeyUsageExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  SubjectKeyIdentifierExtension,
  X509Certificate,
  X509CertificateGenerator,
  cryptoProvider,
} from '@peculiar/x509';
import type { Extension, JsonGeneralNames, PublicKeyType } from '@peculiar/x509';
import { TunnelError } from '@cluster-tunnel/protocol';
import { readOptional, writeAtomic } from './data-file.js';

type CryptoKey = webcrypto.CryptoKey;

// x509 signs through WebCrypto; use Node's rather than whatever global a test runner installs.
cryptoProvider.set(webcrypto as unknown as Parameters<typeof cryptoProvider.set>[0]);

/** File names inside the data directory; keys are written with mode 0600. */
export const CA_FILES = {
  caKey: 'ca.key',
  caCert: 'ca.crt',
  serverKey: 'server.key',
  serverCert: 'server.crt',
} as const;

const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
const CA_VALIDITY_DAYS = 3650;
/** Apple platforms refuse TLS server certificates valid for longer than 825 days; stay well under. */
const SERVER_VALIDITY_DAYS = 397;
/** A server certificate this close to expiry is replaced on start. */
const RENEW_BEFORE_DAYS = 30;
/** notBefore is backdated so peers with slightly slow clocks accept a fresh certificate. */
const BACKDATE_MS = 5 * 60_000;
const HOST_NAME =
  /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

export interface CertificateAuthorityOptions {
  dataDir: string;
  /** The server's own domain `<d>`; its certificate covers `<d>`, `*.<d>`, localhost and 127.0.0.1. */
  domain: string;
  /** Epoch milliseconds; injectable for tests. */
  now?: () => number;
}

/**
 * The tunnel's own CA for local runs: made on first start in the data directory, it signs the
 * server certificate (`<d>`, `*.<d>`, localhost, 127.0.0.1). Production gives tlsCert/tlsKey.
 */
export class CertificateAuthority {
  private constructor(
    private readonly caCert: X509Certificate,
    private readonly caKey: CryptoKey,
    readonly caCertPem: string,
    readonly serverCertPem: string,
    readonly serverKeyPem: string,
    private readonly now: () => number,
  ) {}

  /**
   * Loads the CA from `dataDir`, creating it on first start. The server certificate is
   * (re)issued when missing, not signed by this CA, near expiry, or issued for another domain.
   * A CA certificate without its key is an operator problem (TUN_ERR_CONFIG), never silently replaced.
   */
  static async loadOrCreate(options: CertificateAuthorityOptions): Promise<CertificateAuthority> {
    const now = options.now ?? Date.now;
    const domain = options.domain.toLowerCase();
    if (!HOST_NAME.test(domain)) throw configError(`invalid domain ${JSON.stringify(options.domain)}`);
    const path = (name: keyof typeof CA_FILES): string => join(options.dataDir, CA_FILES[name]);
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 });

    const {
      cert: caCert,
      certPem: caCertPem,
      key: caKey,
    } = await loadCaKeyPair(
      { cert: path('caCert'), key: path('caKey') },
      { create: true, label: 'tunnel CA', subject: 'cluster-tunnel CA', now },
    );

    const expectedNames: JsonGeneralNames = [
      { type: 'dns', value: domain },
      { type: 'dns', value: `*.${domain}` },
      { type: 'dns', value: 'localhost' },
      { type: 'ip', value: '127.0.0.1' },
    ];
    let serverKeyPem = await readOptional(path('serverKey'));
    let serverCertPem = await readOptional(path('serverCert'));
    const reusable =
      serverKeyPem !== undefined &&
      serverCertPem !== undefined &&
      (await serverCertIsCurrent(serverCertPem, serverKeyPem, caCert, expectedNames, now()));
    if (!reusable) {
      const keys = await generateEcKeyPair();
      serverKeyPem = await exportPrivateKeyPem(keys.privateKey);
      const cert = await issue(caCert, caKey, now(), {
        subject: `CN=${domain}`,
        publicKey: keys.publicKey,
        validityMs: SERVER_VALIDITY_DAYS * DAY_MS,
        extendedKeyUsage: ExtendedKeyUsage.serverAuth,
        subjectAltNames: expectedNames,
      });
      serverCertPem = cert.toString('pem');
      await writeAtomic(path('serverKey'), serverKeyPem, 0o600);
      await writeAtomic(path('serverCert'), serverCertPem, 0o644);
    }
    return new CertificateAuthority(
      caCert,
      caKey,
      caCertPem,
      serverCertPem as string,
      serverKeyPem as string,
      now,
    );
  }
}

/** Where a CA's certificate and key live (PEM files). */
export interface CaFiles {
  cert: string;
  key: string;
}

/**
 * A CA from `files`, both made first when `create` allows and the key is missing (a key without
 * its certificate, a crash between the two writes, gets a certificate: nobody trusts one yet).
 * A certificate without its key, a key that is not the certificate's, or an expired CA is an
 * operator problem (TUN_ERR_CONFIG), never silently replaced; so are missing files without
 * `create`. `label` names it in messages, `subject` is a new certificate's name.
 */
export async function loadCaKeyPair(
  files: CaFiles,
  o: { create: boolean; label: string; subject: string; now: () => number },
): Promise<{ cert: X509Certificate; certPem: string; key: CryptoKey }> {
  let keyPem = await readOptional(files.key);
  let certPem = await readOptional(files.cert);
  if (certPem !== undefined && keyPem === undefined) {
    throw configError(`the ${o.label} ${files.cert} exists but its key ${files.key} does not`);
  }
  if (!o.create && (keyPem === undefined || certPem === undefined)) {
    throw configError(`the ${o.label} needs both ${files.cert} and ${files.key}`);
  }
  if (keyPem === undefined) {
    keyPem = await exportPrivateKeyPem((await generateEcKeyPair()).privateKey);
    await writeAtomic(files.key, keyPem, 0o600);
  }
  const key = await importPrivateKey(keyPem, files.key);
  if (certPem === undefined) {
    certPem = (await createCaCert(keyPem, key, o.now(), o.subject)).toString('pem');
    await writeAtomic(files.cert, certPem, 0o644);
  }
  const cert = parseCertificate(certPem, files.cert);
  if (!keyMatchesCert(keyPem, cert)) throw configError(`${files.key} is not the key of ${files.cert}`);
  if (cert.notAfter.getTime() <= o.now()) {
    throw configError(`the ${o.label} ${files.cert} expired on ${cert.notAfter.toISOString()}`);
  }
  return { cert, certPem, key };
}

export interface IssueParams {
  subject: string;
  publicKey: CryptoKey | PublicKeyType;
  validityMs: number;
  extendedKeyUsage: ExtendedKeyUsage;
  subjectAltNames?: JsonGeneralNames;
  keyEncipherment?: boolean;
}

/** A leaf certificate signed by `caKey`, never outliving `caCert`. */
export async function issue(
  caCert: X509Certificate,
  caKey: CryptoKey,
  nowMs: number,
  params: IssueParams,
): Promise<X509Certificate> {
  if (!Number.isInteger(params.validityMs) || params.validityMs < 1) {
    throw configError(`validityMs must be a positive integer, not ${params.validityMs}`);
  }
  // A certificate never outlives its issuer: clients would reject the chain before it expires anyway.
  const notAfterMs = Math.min(nowMs + params.validityMs, caCert.notAfter.getTime());
  const publicKey = params.publicKey as PublicKeyType;
  const extensions: Extension[] = [
    new BasicConstraintsExtension(false, undefined, true),
    new KeyUsagesExtension(
      KeyUsageFlags.digitalSignature | (params.keyEncipherment ? KeyUsageFlags.keyEncipherment : 0),
      true,
    ),
    new ExtendedKeyUsageExtension([params.extendedKeyUsage]),
    await SubjectKeyIdentifierExtension.create(publicKey),
    await AuthorityKeyIdentifierExtension.create(caCert.publicKey),
  ];
  if (params.subjectAltNames) extensions.push(new SubjectAlternativeNameExtension(params.subjectAltNames));
  return X509CertificateGenerator.create({
    serialNumber: randomSerialNumber(),
    subject: params.subject,
    issuer: caCert.subject,
    notBefore: new Date(nowMs - BACKDATE_MS),
    notAfter: new Date(notAfterMs),
    publicKey,
    signingKey: caKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions,
  });
}

/** A self-signed CA certificate for `caKey`, named `<name> <8 hex digits>`, valid 10 years. */
async function createCaCert(
  caKeyPem: string,
  caKey: CryptoKey,
  nowMs: number,
  name: string,
): Promise<X509Certificate> {
  const publicKeyDer = createPublicKey(caKeyPem).export({ type: 'spki', format: 'der' });
  const publicKey = await webcrypto.subtle.importKey('spki', publicKeyDer, EC_KEY, true, ['verify']);
  return X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialNumber(),
    // A per-install suffix tells two tunnel CAs apart in a trust store.
    name: `CN=${name} ${randomBytes(4).toString('hex')}`,
    notBefore: new Date(nowMs - BACKDATE_MS),
    notAfter: new Date(nowMs + CA_VALIDITY_DAYS * DAY_MS),
    keys: { publicKey, privateKey: caKey },
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new BasicConstraintsExtension(true, 0, true),
      new KeyUsagesExtension(
        KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign | KeyUsageFlags.digitalSignature,
        true,
      ),
      await SubjectKeyIdentifierExtension.create(publicKey),
    ],
  });
}

async function generateEcKeyPair(): Promise<webcrypto.CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
}

async function serverCertIsCurrent(
  certPem: string,
  keyPem: string,
  caCert: X509Certificate,
  expectedNames: JsonGeneralNames,
  nowMs: number,
): Promise<boolean> {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    return false;
  }
  const san = cert.getExtension(SubjectAlternativeNameExtension);
  const names = new Set(san?.names.items.map((name) => `${name.type}:${name.value.toLowerCase()}`) ?? []);
  const expected = new Set(expectedNames.map((name) => `${name.type}:${name.value}`));
  const sameNames = names.size === expected.size && [...expected].every((name) => names.has(name));
  return (
    sameNames &&
    cert.notBefore.getTime() <= nowMs &&
    cert.notAfter.getTime() - RENEW_BEFORE_DAYS * DAY_MS > nowMs &&
    cert.issuer === caCert.subject &&
    keyMatchesCert(keyPem, cert) &&
    (await cert.verify({ publicKey: caCert.publicKey, signatureOnly: true }).catch(() => false))
  );
}

export function keyMatchesCert(keyPem: string, cert: X509Certificate): boolean {
  try {
    const spki = createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'der' });
    return spki.equals(Buffer.from(cert.publicKey.rawData));
  } catch {
    return false;
  }
}

function parseCertificate(pem: string, file: string): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (cause) {
    throw configError(`${file} is not a PEM certificate`, cause);
  }
}

async function importPrivateKey(pem: string, file: string): Promise<CryptoKey> {
  try {
    // Through node:crypto first so SEC1 ("EC PRIVATE KEY") files work as well as PKCS#8.
    const der = createPrivateKey(pem).export({ type: 'pkcs8', format: 'der' });
    return await webcrypto.subtle.importKey('pkcs8', der, EC_KEY, true, ['sign']);
  } catch (cause) {
    throw configError(`${file} is not an ECDSA P-256 private key`, cause);
  }
}

async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN PRIVATE KEY-----\n${lines.join('\n')}\n-----END PRIVATE KEY-----\n`;
}

/** 16 random bytes, positive and without a leading zero byte, as RFC 5280 asks. */
function randomSerialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] as number) & 0x7f) | 0x40;
  return bytes.toString('hex');
}

export function configError(message: string, cause?: unknown): TunnelError {
  return new TunnelError('TUN_ERR_CONFIG', message, cause === undefined ? {} : { cause });
}
