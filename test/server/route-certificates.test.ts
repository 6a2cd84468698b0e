/**
 * What the server signs for agents' agent-tls routes, and what it refuses, driven by raw agents
 * (our own control channel over a real TLS, WebSocket and yamux session to an in-process server),
 * so that a test can ask for what a real agent never would. Every refusal is a coded `error`
 * answering that request only: the session goes on.
 */
import { X509Certificate, webcrypto } from 'node:crypto';
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  Pkcs10CertificateRequestGenerator,
  SubjectAlternativeNameExtension,
  cryptoProvider,
  type JsonGeneralNames,
} from '@peculiar/x509';
import { describe, expect, test } from 'vitest';
import { SUPPORTED_CAPABILITIES, type ControlMessage } from '@cluster-tunnel/protocol';
import { resolveServerConfig } from '@cluster-tunnel/server';
import { startInProcessServer, type InProcessServer } from '../helpers/in-process.js';
import { registerRaw } from '../helpers/hostile.js';
import { tempDir } from '../helpers/temp-dir.js';
import { closeOf } from '../helpers/sessions.js';
import { SERVER_BIN } from '../helpers/tunnel.js';
import { promisify } from 'node:util';

cryptoProvider.set(webcrypto as unknown as Parameters<typeof cryptoProvider.set>[0]);
const execFileAsync = promisify(execFile);

const HOST_A = 'cluster-a.proxy.localhost';
const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

async function csr(
  names: JsonGeneralNames,
  algorithm: webcrypto.EcKeyGenParams | webcrypto.RsaHashedKeyGenParams = EC_P256,
): Promise<{ pem: string; spki: Buffer }> {
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const request = await Pkcs10CertificateRequestGenerator.create({
    name: 'CN=whatever-the-agent-says',
    keys,
    signingAlgorithm: 'hash' in algorithm ? algorithm : { name: 'ECDSA', hash: 'SHA-256' },
    extensions: names.length > 0 ? [new SubjectAlternativeNameExtension(names)] : [],
  });
  return {
    pem: request.toString('pem'),
    spki: Buffer.from(await webcrypto.subtle.exportKey('spki', keys.publicKey)),
  };
}

const dns = (...values: string[]): JsonGeneralNames => values.map((value) => ({ type: 'dns', value }));

/** An agent of cluster `a` whose `cluster-a` route is agent-tls and `cluster-a-dash` passthrough. */
async function agentOfA(s: InProcessServer, capabilities: readonly string[] = SUPPORTED_CAPABILITIES) {
  const raw = await registerRaw(
    { url: `wss://127.0.0.1:${s.port}/connect`, caFile: s.caFile },
    await s.token('a'),
    ['cluster-a', 'cluster-a-dash'],
    { capabilities: [...capabilities], routeModes: { 'cluster-a': 'agent-tls' } },
  );
  expect(raw.registered.type).toBe('registered');
  let nextId = 1;
  return {
    ...raw,
    /** Sends a certificate-request and resolves with the answer to it. */
    async ask(pem: string): Promise<ControlMessage> {
      const requestId = nextId++;
      const answer = raw.control.next(5_000);
      raw.control.send({ type: 'certificate-request', requestId, csr: pem });
      const message = await answer;
      expect(message).toMatchObject({ requestId });
      return message;
    },
  };
}

const codeOf = (m: ControlMessage): string => (m.type === 'error' ? m.code : m.type);

describe('route certificate requests', () => {
  test("are signed by the route CA, for the agent's own agent-tls hostnames and key, for routeCertLifetimeMs", async () => {
    const s = await startInProcessServer(['--route-cert-lifetime-ms', '90m']);
    const agent = await agentOfA(s);
    const request = await csr(dns(HOST_A));
    const answer = await agent.ask(request.pem);
    if (answer.type !== 'certificate')
      throw new Error(`expected a certificate, got ${JSON.stringify(answer)}`);

    const cert = new X509Certificate(answer.certificate);
    const routeCa = new X509Certificate(await readFile(join(s.dataDir, 'route-ca.crt'), 'utf8'));
    const serverCa = new X509Certificate(await readFile(s.caFile, 'utf8'));
    expect(cert.verify(routeCa.publicKey)).toBe(true);
    // The route CA is a key pair of its own, not the CA of the server's TLS certificate.
    expect(cert.verify(serverCa.publicKey)).toBe(false);
    expect(cert.subjectAltName).toBe(`DNS:${HOST_A}`);
    // The subject is the server's to choose, whatever the CSR said.
    expect(cert.subject).toBe(`CN=${HOST_A}`);
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
    expect(cert.publicKey.export({ type: 'spki', format: 'der' }).equals(request.spki)).toBe(true);
    expect(Date.parse(cert.validTo) - Date.parse(cert.validFrom)).toBe(90 * 60_000 + 5 * 60_000);
    expect(s.logs.find((l) => l.msg === 'route certificate issued')).toMatchObject({
      clusterId: 'a',
      hostnames: [HOST_A],
      serialNumber: cert.serialNumber,
    });
  });

  test("a name outside the agent's agent-tls routes is refused with its code, and the session goes on", async () => {
    const s = await startInProcessServer();
    const agent = await agentOfA(s);
    // Another cluster's hostname, and the agent's own passthrough route: neither is its to serve by agent-tls.
    for (const names of [dns('cluster-b.proxy.localhost'), dns(HOST_A, 'cluster-a-dash.proxy.localhost')]) {
      const answer = await agent.ask((await csr(names)).pem);
      expect(answer).toMatchObject({ type: 'error', code: 'TUN_ERR_CERT_NAME_FORBIDDEN' });
    }
    expect(agent.session.isClosed).toBe(false);
    expect(codeOf(await agent.ask((await csr(dns(HOST_A))).pem))).toBe('certificate');
    expect(s.logs.filter((l) => l.msg === 'route certificate refused').map((l) => l.code)).toEqual([
      'TUN_ERR_CERT_NAME_FORBIDDEN',
      'TUN_ERR_CERT_NAME_FORBIDDEN',
    ]);
  });

  test('a malformed, oversized, unsigned or wrong-key CSR is refused as TUN_ERR_CSR_INVALID, each alone', async () => {
    const s = await startInProcessServer();
    const good = await csr(dns(HOST_A));
    // The signature's last base64 characters changed: the CSR no longer proves the key.
    const body = good.pem.split('\n');
    const last = body.length - 3;
    body[last] = body[last]!.slice(0, -6) + (body[last]!.endsWith('AAAAAA') ? 'BBBBBB' : 'AAAAAA');
    const rsa = await csr(dns(HOST_A), {
      name: 'RSASSA-PKCS1-v1_5',
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: 'SHA-256',
    });
    const cases: Record<string, string> = {
      'not PEM': 'hello',
      'PEM of garbage': '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n',
      'over 8 KiB': `${good.pem}${' '.repeat(9000)}`,
      'signature altered': body.join('\n'),
      'an RSA key': rsa.pem,
      'no subjectAltName': (await csr([])).pem,
      'an IP name': (await csr([{ type: 'ip', value: '127.0.0.1' }])).pem,
    };
    const answers: Record<string, string> = {};
    for (const [name, pem] of Object.entries(cases)) {
      // A session of its own per case: a session's allowance is 5 requests at once.
      const agent = await agentOfA(s);
      answers[name] = codeOf(await agent.ask(pem));
      expect(codeOf(await agent.ask(good.pem))).toBe('certificate');
    }
    expect(answers).toEqual(Object.fromEntries(Object.keys(cases).map((k) => [k, 'TUN_ERR_CSR_INVALID'])));
    const text = await s.server.metrics.registry.getSingleMetricAsString(
      'tunnel_route_certificate_requests_total',
    );
    expect(text).toContain('tunnel_route_certificate_requests_total{outcome="TUN_ERR_CSR_INVALID"} 7');
  });

  test('a session gets 5 requests at once, then one a minute; more are refused as retryable', async () => {
    const s = await startInProcessServer();
    const agent = await agentOfA(s);
    const pem = (await csr(dns(HOST_A))).pem;
    const codes: string[] = [];
    for (let i = 0; i < 7; i++) codes.push(codeOf(await agent.ask(pem)));
    expect(codes).toEqual([
      ...Array(5).fill('certificate'),
      'TUN_ERR_CERT_SIGNING_REFUSED',
      'TUN_ERR_CERT_SIGNING_REFUSED',
    ]);
    // Another session of the same agent has its own allowance.
    const other = await agentOfA(s);
    expect(codeOf(await other.ask(pem))).toBe('certificate');
  });

  test('an agent that keeps asking far beyond its allowance loses its session, and the log says so once', async () => {
    const s = await startInProcessServer();
    const agent = await agentOfA(s);
    const pem = (await csr(dns(HOST_A))).pem;
    const closed = closeOf(agent.session);
    // Written at once, without waiting for answers: a flood.
    for (let requestId = 1; requestId <= 40; requestId++) {
      agent.control.send({ type: 'certificate-request', requestId, csr: pem });
    }
    await closed;
    expect(agent.session.isClosed).toBe(true);
    expect(
      s.logs.filter((l) => l.msg === 'route certificate refused' && l.level >= 40).map((l) => l.code),
    ).toEqual(['TUN_ERR_CERT_SIGNING_REFUSED']);
    expect(s.logs.find((l) => l.msg === 'agent session ended')).toMatchObject({
      code: 'TUN_ERR_LIMIT_EXCEEDED',
    });
    // Another agent of the cluster is not harmed.
    const other = await agentOfA(s);
    expect(codeOf(await other.ask(pem))).toBe('certificate');
  });

  test('an agent that did not announce route-certificates and asks anyway is a protocol violation', async () => {
    const s = await startInProcessServer();
    const agent = await agentOfA(s, ['typed-stream-header', 'route-modes']);
    const closed = closeOf(agent.session);
    const answer = agent.control.next(5_000).catch(() => undefined);
    agent.control.send({ type: 'certificate-request', requestId: 1, csr: (await csr(dns(HOST_A))).pem });
    expect(await answer).toMatchObject({ type: 'error', code: 'TUN_ERR_BAD_CONTROL_MESSAGE' });
    await closed;
    expect(agent.session.isClosed).toBe(true);
  });

  test('several replicas without a shared route CA sign nothing, and say why', async () => {
    const s = await startInProcessServer(['--server-count', '2']);
    const agent = await agentOfA(s);
    const answer = await agent.ask((await csr(dns(HOST_A))).pem);
    expect(answer).toMatchObject({ type: 'error', code: 'TUN_ERR_CERT_SIGNING_REFUSED' });
    expect(answer.type === 'error' && answer.message).toMatch(/set routeCaCert and routeCaKey/);
  });
});

describe('the route CA', () => {
  test('`route-ca create` makes one that every replica given routeCaCert and routeCaKey signs with', async () => {
    const dir = tempDir();
    const { stdout } = await execFileAsync(process.execPath, [
      SERVER_BIN,
      'route-ca',
      'create',
      '--data-dir',
      dir,
    ]);
    const [certFile, keyFile] = stdout.trim().split('\n');
    expect(certFile).toBe(join(dir, 'route-ca.crt'));
    const ca = new X509Certificate(await readFile(certFile!, 'utf8'));
    expect(ca.ca).toBe(true);
    const pem = (await csr(dns(HOST_A))).pem;
    for (let replica = 0; replica < 2; replica++) {
      const s = await startInProcessServer([
        ...['--server-count', '2', '--route-ca-cert', certFile!, '--route-ca-key', keyFile!],
      ]);
      const answer = await (await agentOfA(s)).ask(pem);
      if (answer.type !== 'certificate') throw new Error(`replica ${replica}: ${JSON.stringify(answer)}`);
      expect(new X509Certificate(answer.certificate).verify(ca.publicKey)).toBe(true);
    }
  });

  test('routeCaCert without routeCaKey is a configuration problem', () => {
    expect(() =>
      resolveServerConfig({ argv: ['--route-ca-cert', SERVER_BIN], env: {}, cwd: tempDir() }),
    ).toThrow(/routeCaCert \(flag --route-ca-cert\): set without routeCaKey; give both or neither/);
  });

  test('a route CA key that is not the certificate’s stops the start', async () => {
    const a = tempDir();
    const b = tempDir();
    await execFileAsync(process.execPath, [SERVER_BIN, 'route-ca', 'create', '--data-dir', a]);
    await execFileAsync(process.execPath, [SERVER_BIN, 'route-ca', 'create', '--data-dir', b]);
    await expect(
      startInProcessServer([
        '--route-ca-cert',
        join(a, 'route-ca.crt'),
        '--route-ca-key',
        join(b, 'route-ca.key'),
      ]),
    ).rejects.toMatchObject({ code: 'TUN_ERR_CONFIG', message: expect.stringMatching(/is not the key of/) });
  });

  test('a generated key file is private', async () => {
    const dir = tempDir();
    await execFileAsync(process.execPath, [SERVER_BIN, 'route-ca', 'create', '--data-dir', dir]);
    expect(statSync(join(dir, 'route-ca.key')).mode & 0o777).toBe(0o600);
    // Never the same pair twice: a second `create` keeps the first.
    const first = await readFile(join(dir, 'route-ca.crt'), 'utf8');
    await execFileAsync(process.execPath, [SERVER_BIN, 'route-ca', 'create', '--data-dir', dir]);
    expect(await readFile(join(dir, 'route-ca.crt'), 'utf8')).toBe(first);
  });
});
