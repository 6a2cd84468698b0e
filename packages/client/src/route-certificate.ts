/**
 * The agent's route certificate: what it ends its users' TLS with on agent-tls routes
 * (docs/ARCHITECTURE.md, "Route certificates"). The key pair is made at start and never leaves
 * the process; a server replica's route CA signs a CSR for the agent-tls route hostnames, sent
 * over the control stream of whichever session is up.
 *
 * Life of one certificate, by these rules:
 * - asked for when a session registers and the agent holds no valid certificate for the names
 *   that server publishes (the first, or one expired while no server was reachable);
 * - renewed at two thirds of its life, counted from when it arrived (a server's clock may differ
 *   from ours), over any serving session; until the new one arrives the old one is served;
 * - a failed request is retried with a doubling delay (5 s to 5 min) and logged as a warning
 *   (TUN_ERR_ROUTE_CERT_RENEWAL while a valid certificate is held), hours before it expires; the
 *   expiry is a metric, so an alert fires long before users notice;
 * - a new certificate changes only what later TLS handshakes get: open connections go on.
 */
import { X509Certificate, createHash, createPrivateKey, webcrypto } from 'node:crypto';
import tls from 'node:tls';
import {
  Pkcs10CertificateRequestGenerator,
  SubjectAlternativeNameExtension,
  cryptoProvider,
} from '@peculiar/x509';
import { CAPABILITIES, TunnelError, type Capability, type Clock } from '@cluster-tunnel/protocol';
import type { Logger } from '@cluster-tunnel/config';
import type { AgentMetrics } from './metrics.js';

/** What a request goes over: a session to a server replica (ServerSession). */
export interface SigningSession {
  readonly isServing: boolean;
  readonly capabilities: ReadonlySet<Capability>;
  readonly serverId: string | undefined;
  requestCertificate(csr: string, timeoutMs: number): Promise<string>;
}

// x509 signs through WebCrypto; use Node's rather than whatever global a test runner installs.
cryptoProvider.set(webcrypto as unknown as Parameters<typeof cryptoProvider.set>[0]);

const EC_KEY = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;
/** A certificate is renewed once this share of its life (from its arrival) has passed. */
export const RENEW_AT_FRACTION = 2 / 3;
const RETRY_INITIAL_MS = 5_000;
const RETRY_MAX_MS = 5 * 60_000;
const REQUEST_TIMEOUT_MS = 15_000;

export interface RouteCertificateOptions {
  /** Timers (renewal, retries). */
  clock: Clock;
  /** Epoch milliseconds: certificate lifetimes are wall-clock times. */
  now: () => number;
  log: Logger;
  metrics?: AgentMetrics;
  /** The sessions a request may go over: every session the agent holds now. */
  sessions: () => Iterable<SigningSession>;
  retryInitialMs?: number;
  retryMaxMs?: number;
}

/** The certificate being served, and facts about it for logs, metrics and tests. */
export interface InstalledCertificate {
  readonly pem: string;
  readonly serialNumber: string;
  readonly hostnames: readonly string[];
  readonly notAfterMs: number;
  readonly receivedAtMs: number;
  readonly renewAtMs: number;
  readonly secureContext: tls.SecureContext;
}

export class RouteCertificate {
  private readonly o: RouteCertificateOptions;
  /** `spkiSha256`: which key certificates are for, logged without the key (TLS clients can match it). */
  private keys:
    { keyPem: string; pair: webcrypto.CryptoKeyPair; spki: Buffer; spkiSha256: string } | undefined;
  private installed: InstalledCertificate | undefined;
  /** The full hostnames to ask for, learnt from the first server that published them. */
  private hostnames: string[] | undefined;
  private csrPem: string | undefined;
  private requesting = false;
  private timer: unknown;
  private retryMs: number;
  private closed = false;

  constructor(options: RouteCertificateOptions) {
    this.o = options;
    this.retryMs = options.retryInitialMs ?? RETRY_INITIAL_MS;
  }

  /** Makes the key pair; call once before any session registers. */
  async start(): Promise<void> {
    const pair = (await webcrypto.subtle.generateKey(EC_KEY, true, [
      'sign',
      'verify',
    ])) as webcrypto.CryptoKeyPair;
    const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', pair.privateKey));
    const keyPem = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
      .export({ format: 'pem', type: 'pkcs8' })
      .toString();
    const spki = Buffer.from(await webcrypto.subtle.exportKey('spki', pair.publicKey));
    this.keys = { keyPem, pair, spki, spkiSha256: createHash('sha256').update(spki).digest('hex') };
  }

  /** The certificate served now: undefined before the first arrives and once it has expired. */
  get current(): InstalledCertificate | undefined {
    const c = this.installed;
    return c !== undefined && c.notAfterMs > this.o.now() ? c : undefined;
  }

  /**
   * A session registered: its `registered` published `hostnames`, of which those of `labels`
   * (the agent-tls routes, `cluster-u1`) are ours to serve. Asks for a certificate now when none
   * valid is held for these names, or when the renewal is due.
   */
  onRegistered(hostnames: readonly string[], labels: readonly string[]): void {
    if (this.closed) return;
    const wanted = hostnames.filter((h) => labels.includes(h.slice(0, h.indexOf('.')))).sort();
    if (wanted.length === 0) return;
    if (this.hostnames === undefined || wanted.join() !== this.hostnames.join()) {
      if (this.hostnames !== undefined) {
        this.o.log.warn(
          { hostnames: wanted, previous: this.hostnames },
          'route hostnames changed: new certificate',
        );
      }
      this.hostnames = wanted;
      this.csrPem = undefined;
      this.request();
      return;
    }
    const c = this.current;
    if (c === undefined || c.renewAtMs <= this.o.now()) this.request();
  }

  close(): void {
    this.closed = true;
    this.o.clock.clearTimeout(this.timer);
  }

  /** One request over a serving session; on failure, the next one after the retry delay. */
  private request(): void {
    if (this.requesting || this.closed || this.hostnames === undefined) return;
    this.o.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.requesting = true;
    void this.attempt()
      .then((installed) => {
        this.retryMs = this.o.retryInitialMs ?? RETRY_INITIAL_MS;
        this.schedule(installed.renewAtMs - this.o.now());
      })
      .catch((err: unknown) => this.failed(err))
      .finally(() => {
        this.requesting = false;
      });
  }

  private async attempt(): Promise<InstalledCertificate> {
    const hostnames = this.hostnames!;
    const session = [...this.o.sessions()].find(
      (s) => s.isServing && s.capabilities.has(CAPABILITIES.routeCertificates),
    );
    if (session === undefined) {
      throw new TunnelError('TUN_ERR_SESSION_CLOSED', 'no session to a server that signs route certificates');
    }
    this.csrPem ??= await this.createCsr(hostnames);
    const pem = await session.requestCertificate(this.csrPem, REQUEST_TIMEOUT_MS);
    const installed = this.install(pem, hostnames);
    this.o.metrics?.routeCertificateRequests.inc({ outcome: 'issued' });
    this.o.log.info(
      {
        serverId: session.serverId,
        hostnames,
        serialNumber: installed.serialNumber,
        publicKeySha256: this.keys!.spkiSha256,
        notAfter: new Date(installed.notAfterMs).toISOString(),
        renewAt: new Date(installed.renewAtMs).toISOString(),
      },
      'route certificate installed',
    );
    return installed;
  }

  /** Checks what the server sent is ours (our key, our names, not expired) and serves it. */
  private install(pem: string, hostnames: readonly string[]): InstalledCertificate {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(pem);
    } catch (cause) {
      throw new TunnelError(
        'TUN_ERR_BAD_CONTROL_MESSAGE',
        'the server sent a certificate that does not parse',
        { cause },
      );
    }
    const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
    if (!spki.equals(this.keys!.spki)) {
      throw new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', 'the server sent a certificate for another key');
    }
    const missing = hostnames.filter((h) => cert.checkHost(h, { wildcards: false, subject: 'never' }) !== h);
    if (missing.length > 0) {
      throw new TunnelError(
        'TUN_ERR_BAD_CONTROL_MESSAGE',
        `the certificate does not cover ${missing.join(', ')}`,
      );
    }
    const receivedAtMs = this.o.now();
    const notAfterMs = Date.parse(cert.validTo);
    if (!(notAfterMs > receivedAtMs)) {
      throw new TunnelError('TUN_ERR_BAD_CONTROL_MESSAGE', `the certificate expired at ${cert.validTo}`);
    }
    const installed: InstalledCertificate = {
      pem,
      serialNumber: cert.serialNumber,
      hostnames: [...hostnames],
      notAfterMs,
      receivedAtMs,
      renewAtMs: receivedAtMs + Math.floor((notAfterMs - receivedAtMs) * RENEW_AT_FRACTION),
      secureContext: tls.createSecureContext({ key: this.keys!.keyPem, cert: pem }),
    };
    this.installed = installed;
    this.o.metrics?.routeCertificateExpiry.set(notAfterMs / 1000);
    return installed;
  }

  private failed(err: unknown): void {
    const e = err instanceof TunnelError ? err : new TunnelError('TUN_ERR_ROUTE_CERT_RENEWAL', String(err));
    this.o.metrics?.routeCertificateRequests.inc({ outcome: 'failed' });
    const held = this.current;
    const retryInMs = this.retryMs;
    if (held !== undefined) {
      this.o.log.warn(
        {
          code: 'TUN_ERR_ROUTE_CERT_RENEWAL',
          cause: e.code,
          err: e.message,
          expiresAt: new Date(held.notAfterMs).toISOString(),
          retryInMs,
        },
        'route certificate renewal failed: serving the current one until it expires',
      );
    } else {
      this.o.log.warn(
        { code: e.code, err: e.message, retryInMs },
        'no route certificate: agent-tls routes refuse users until one is issued',
      );
    }
    this.retryMs = Math.min(this.retryMs * 2, this.o.retryMaxMs ?? RETRY_MAX_MS);
    this.schedule(retryInMs);
  }

  private schedule(inMs: number): void {
    if (this.closed) return;
    this.o.clock.clearTimeout(this.timer);
    this.timer = this.o.clock.setTimeout(
      () => {
        this.timer = undefined;
        this.request();
      },
      Math.max(0, inMs),
    );
  }

  private async createCsr(hostnames: readonly string[]): Promise<string> {
    const csr = await Pkcs10CertificateRequestGenerator.create({
      name: `CN=${hostnames[0]}`,
      keys: this.keys!.pair,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [new SubjectAlternativeNameExtension(hostnames.map((value) => ({ type: 'dns', value })))],
    });
    return csr.toString('pem');
  }
}
