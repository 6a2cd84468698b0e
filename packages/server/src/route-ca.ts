/**
 * The route CA: it signs the short-lived certificates agents serve their `agent-tls` routes with
 * (docs/ARCHITECTURE.md, "Route certificates"). It is a key pair of its own, apart from the
 * server's TLS certificate and its CA, and every replica holds the same one (routeCaCert and
 * routeCaKey, like the token keys); a single local server makes one in its data directory.
 *
 * What it signs is decided here, never by the CSR: the names must all be agent-tls route
 * hostnames the caller allows (the agent's own, for its token's cluster), the key must be
 * ECDSA P-256 or P-384 and must have signed the CSR; the subject, extensions and lifetime are
 * ours. Every refusal is a coded TunnelError (docs/ERRORS.md).
 */
import { createPublicKey, type webcrypto } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ExtendedKeyUsage,
  Pkcs10CertificateRequest,
  SubjectAlternativeNameExtension,
  type X509Certificate,
} from '@peculiar/x509';
import { TunnelError } from '@cluster-tunnel/protocol';
import { issue, loadCaKeyPair, type CaFiles } from './certificate-authority.js';

/** The route CA's files in the data directory when routeCaCert/routeCaKey are not given. */
export const ROUTE_CA_FILES = { cert: 'route-ca.crt', key: 'route-ca.key' } as const;

/** The largest CSR (PEM) looked at: one with 64 long names is under 4 KiB. */
export const MAX_CSR_BYTES = 8 * 1024;
/** The most names one route certificate may carry (an agent registers at most 64 routes). */
export const MAX_CSR_NAMES = 64;
/** Curves (Node's names) an agent's key may use. */
const ACCEPTED_CURVES: ReadonlySet<string> = new Set(['prime256v1', 'secp384r1']);
const SAN_OID = '2.5.29.17';

export type RouteCaFiles = CaFiles;

export interface IssuedRouteCertificate {
  pem: string;
  serialNumber: string;
  hostnames: string[];
  notAfter: Date;
}

export class RouteCertificateAuthority {
  private constructor(
    private readonly caCert: X509Certificate,
    private readonly caKey: webcrypto.CryptoKey,
    private readonly now: () => number,
  ) {}

  get notAfter(): Date {
    return this.caCert.notAfter;
  }

  /**
   * Loads the CA from `files`. With `create`, missing files are made first (a local run's data
   * directory); otherwise, or when only the certificate exists, that is a TUN_ERR_CONFIG.
   */
  static async load(
    files: RouteCaFiles,
    o: { create: boolean; now?: () => number },
  ): Promise<RouteCertificateAuthority> {
    const now = o.now ?? Date.now;
    const { cert, key } = await loadCaKeyPair(files, {
      create: o.create,
      label: 'route CA',
      subject: 'cluster-tunnel route CA',
      now,
    });
    return new RouteCertificateAuthority(cert, key, now);
  }

  /** The data directory's route CA files, the directory made first. */
  static async dataDirFiles(dataDir: string): Promise<RouteCaFiles> {
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    return { cert: join(dataDir, ROUTE_CA_FILES.cert), key: join(dataDir, ROUTE_CA_FILES.key) };
  }

  /**
   * Signs `csrPem` for `lifetimeMs` when every name it asks for is in `allowed` (lower-case
   * hostnames). Throws TUN_ERR_CSR_INVALID or TUN_ERR_CERT_NAME_FORBIDDEN.
   */
  async sign(
    csrPem: string,
    allowed: ReadonlySet<string>,
    lifetimeMs: number,
  ): Promise<IssuedRouteCertificate> {
    const csr = await verifiedCsr(csrPem);
    const hostnames = csrHostnames(csr);
    const forbidden = hostnames.filter((h) => !allowed.has(h));
    if (forbidden.length > 0) {
      throw new TunnelError(
        'TUN_ERR_CERT_NAME_FORBIDDEN',
        `not an agent-tls route of this agent: ${forbidden.slice(0, 8).join(', ')}`,
        { details: { forbidden: forbidden.slice(0, 8) } },
      );
    }
    const cert = await issue(this.caCert, this.caKey, this.now(), {
      subject: `CN=${hostnames[0]}`,
      publicKey: csr.publicKey,
      validityMs: lifetimeMs,
      extendedKeyUsage: ExtendedKeyUsage.serverAuth,
      subjectAltNames: hostnames.map((value) => ({ type: 'dns', value })),
    });
    // Upper-case hex, as OpenSSL and node:crypto print serials (the agent logs it so too).
    return {
      pem: cert.toString('pem'),
      serialNumber: cert.serialNumber.toUpperCase(),
      hostnames,
      notAfter: cert.notAfter,
    };
  }
}

function invalid(reason: string, cause?: unknown): TunnelError {
  return new TunnelError('TUN_ERR_CSR_INVALID', `certificate signing request refused: ${reason}`, {
    ...(cause === undefined ? {} : { cause }),
    details: { reason },
  });
}

/** Parsed, of an accepted key type, and signed by that key (proof the agent holds it). */
async function verifiedCsr(pem: string): Promise<Pkcs10CertificateRequest> {
  if (Buffer.byteLength(pem, 'utf8') > MAX_CSR_BYTES) throw invalid(`over ${MAX_CSR_BYTES} bytes`);
  if (
    !/^\s*-----BEGIN CERTIFICATE REQUEST-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE REQUEST-----\s*$/.test(pem)
  ) {
    throw invalid('not one PEM CERTIFICATE REQUEST');
  }
  let csr: Pkcs10CertificateRequest;
  try {
    csr = new Pkcs10CertificateRequest(pem);
  } catch (cause) {
    throw invalid('not a PKCS#10 request', cause);
  }
  let curve: string | undefined;
  try {
    const key = createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: 'der', type: 'spki' });
    curve = key.asymmetricKeyType === 'ec' ? key.asymmetricKeyDetails?.namedCurve : undefined;
  } catch (cause) {
    throw invalid('its public key does not parse', cause);
  }
  if (curve === undefined || !ACCEPTED_CURVES.has(curve))
    throw invalid('the key must be ECDSA P-256 or P-384');
  const signed = await csr.verify().catch(() => false);
  if (!signed) throw invalid('its signature does not verify with its own key');
  return csr;
}

/** The DNS names of the CSR's subjectAltName: at least one, no other name types, no duplicates. */
function csrHostnames(csr: Pkcs10CertificateRequest): string[] {
  const extension = csr.extensions.find((e) => e.type === SAN_OID);
  if (extension === undefined) throw invalid('it asks for no subjectAltName');
  let san: SubjectAlternativeNameExtension;
  try {
    san = new SubjectAlternativeNameExtension(extension.rawData);
  } catch (cause) {
    throw invalid('its subjectAltName does not parse', cause);
  }
  const items = san.names.items;
  if (items.length === 0) throw invalid('it asks for no names');
  if (items.length > MAX_CSR_NAMES) throw invalid(`it asks for more than ${MAX_CSR_NAMES} names`);
  const names = new Set<string>();
  for (const item of items) {
    if (item.type !== 'dns') throw invalid(`it asks for a ${item.type} name; only DNS names are signed`);
    names.add(item.value.toLowerCase());
  }
  return [...names];
}
