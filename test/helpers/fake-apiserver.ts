// A fake kube-apiserver, just real enough for the real kubectl (v1.32): legacy discovery,
// pods as Tables, chunked watches, followed logs, exec over WebSocket (v5/v4.channel.k8s.io)
// and large raw objects. It authenticates like the real one: a client certificate signed by
// its CA (CN = user, O = groups) or the bearer token; anything else gets a 401 Status.
//
// Out of scope: `kubectl port-forward`. kubectl 1.31+ tunnels SPDY/3.1 inside a WebSocket
// (subprotocol SPDY/3.1+portforward.k8s.io) and falls back to plain SPDY; either way the
// server must speak SPDY framing (zlib-compressed header blocks with the SPDY dictionary,
// SYN_STREAM/SYN_REPLY per data and error stream, flow control), i.e. an SPDY
// implementation. Both upgrades are refused with a 400 Status. Port-forward bytes are as
// opaque to a TLS-passthrough tunnel as exec bytes, so exec covers that path.
import { createHash, randomUUID } from 'node:crypto';
import { createSecureServer } from 'node:http2';
import { createServer } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { WebSocketServer } from 'ws';
import type { WebSocket } from 'ws';
import { createTestCa } from './pki.js';
import type { IssuedCert } from './pki.js';

export interface FakeApiServerOptions {
  /** DNS SANs of the serving certificate; 127.0.0.1 and localhost are always added. */
  hostnames: string[];
  bearerToken?: string;
  /**
   * Speak HTTP/2 to clients that offer it, as a real kube-apiserver does (kubectl then multiplexes
   * its requests on one connection), and HTTP/1.1 to the others (exec's WebSocket upgrade).
   */
  http2?: boolean;
}

export interface FakePodSpec {
  name: string;
  namespace?: string;
  phase?: 'Pending' | 'Running' | 'Succeeded' | 'Failed';
  containers?: string[];
  labels?: Record<string, string>;
}

export interface BigObject {
  path: string;
  sizeBytes: number;
  sha256: string;
}

export interface FakeApiServer {
  url: string;
  port: number;
  caCertPem: string;
  issueClientCert(user: string, groups?: string[]): Promise<IssuedCert>;
  /** Per authenticated request: the client-certificate CN, or `token:<token>`. */
  seenIdentities: string[];
  /** Per request: `METHOD /path?query`. */
  seenRequests: string[];
  /** Per request other than an upgrade: its HTTP version (`1.1`, `2.0`). */
  seenHttpVersions: string[];
  addPod(pod: FakePodSpec): void;
  modifyPod(name: string, change: Omit<FakePodSpec, 'name' | 'namespace'>, namespace?: string): void;
  deletePod(name: string, namespace?: string): void;
  setLog(pod: string, lines: string[], namespace?: string): void;
  appendLog(pod: string, line: string, namespace?: string): void;
  /** Registers deterministic JSON of exactly `sizeBytes` at /api/v1/namespaces/default/configmaps/<name>. */
  bigObject(sizeBytes: number, name?: string): BigObject;
  close(): Promise<void>;
}

interface StoredPod {
  name: string;
  namespace: string;
  uid: string;
  resourceVersion: number;
  createdAt: Date;
  phase: string;
  containers: string[];
  labels: Record<string, string>;
}

interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  pod: StoredPod;
}

interface Watcher {
  namespace: string | undefined;
  name: string | undefined;
  asTable: boolean;
  sentColumns: boolean;
  res: ServerResponse;
}

type Json = Record<string, unknown>;

const maxRecorded = 10_000;
const maxHistory = 1_000;
// Newest first: kubectl 1.32 offers v5 (stdin close signal) then falls back to v4.
const execProtocols = ['v5.channel.k8s.io', 'v4.channel.k8s.io'] as const;
const channel = {
  stdin: 0, // client → server: raw bytes
  stdout: 1, // server → client: raw bytes
  stderr: 2, // server → client: raw bytes
  error: 3, // server → client: one metav1.Status JSON, then the socket closes
  resize: 4, // client → server: {"Width":n,"Height":n} (tty only; ignored)
  close: 255, // v5, client → server: one byte naming the half-closed stream
} as const;

const podColumns = [
  ['Name', 'name', 'Name must be unique within a namespace.'],
  ['Ready', '', 'The aggregate readiness state of this pod for accepting traffic.'],
  ['Status', '', 'The aggregate status of the containers in this pod.'],
  ['Restarts', '', 'The number of times the containers in this pod have been restarted.'],
  ['Age', '', 'CreationTimestamp is a timestamp representing the server time when this object was created.'],
].map(([name, format, description]) => ({ name, type: 'string', format, description, priority: 0 }));

// [name, singularName, namespaced, kind, shortNames, verbs]: what kubectl needs to map
// `pods`, `po`, `cm`, `ns` and the subresources it calls to paths.
const coreResources = (
  [
    ['pods', 'pod', true, 'Pod', ['po'], 'get list watch'],
    ['pods/log', '', true, 'Pod', [], 'get'],
    ['pods/exec', '', true, 'PodExecOptions', [], 'create get'],
    ['pods/portforward', '', true, 'PodPortForwardOptions', [], 'create get'],
    ['configmaps', 'configmap', true, 'ConfigMap', ['cm'], 'get'],
    ['namespaces', 'namespace', false, 'Namespace', ['ns'], 'get list'],
  ] as const
).map(([name, singularName, namespaced, kind, shortNames, verbs]) => {
  return { name, singularName, namespaced, kind, shortNames, verbs: verbs.split(' ') };
});

const versionInfo = {
  ...{ major: '1', minor: '32', gitVersion: 'v1.32.0-fake', gitCommit: '0', gitTreeState: 'clean' },
  ...{ buildDate: '2025-01-01T00:00:00Z', goVersion: 'go1.23', compiler: 'gc', platform: 'linux/amd64' },
};
const noSuchResource = 'the server could not find the requested resource';

function status(code: number, reason: string, message: string): Json {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

function sendJson(res: ServerResponse, code: number, body: Json): void {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}

/** Refuses an upgrade on the raw socket with a Status body, as the apiserver does. */
function refuseUpgrade(socket: Socket, code: number, reason: string, message: string): void {
  const body = JSON.stringify(status(code, reason, message));
  socket.end(
    `HTTP/1.1 ${code} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      `Connection: close\r\n\r\n${body}`,
  );
}

function humanAge(from: Date): string {
  const s = Math.max(0, Math.floor((Date.now() - from.getTime()) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  return `${Math.floor(s / 3600)}h`;
}

// RFC 3339 in whole seconds, as the apiserver writes metav1.Time.
const timestamp = (at: Date): string => at.toISOString().replace(/\.\d{3}Z$/, 'Z');

function podMetadata(pod: StoredPod): Json {
  return {
    name: pod.name,
    namespace: pod.namespace,
    uid: pod.uid,
    resourceVersion: String(pod.resourceVersion),
    creationTimestamp: timestamp(pod.createdAt),
    labels: pod.labels,
  };
}

function podObject(pod: StoredPod): Json {
  const running = pod.phase === 'Running';
  return {
    kind: 'Pod',
    apiVersion: 'v1',
    metadata: podMetadata(pod),
    spec: { containers: pod.containers.map((name) => ({ name, image: 'busybox' })), nodeName: 'fake-node' },
    status: {
      phase: pod.phase,
      containerStatuses: pod.containers.map((name) => ({
        name,
        image: 'busybox',
        imageID: '',
        ready: running,
        started: running,
        restartCount: 0,
        state: running
          ? { running: { startedAt: timestamp(pod.createdAt) } }
          : { waiting: { reason: pod.phase } },
      })),
    },
  };
}

function podRow(pod: StoredPod): Json {
  const ready = pod.phase === 'Running' ? pod.containers.length : 0;
  return {
    cells: [pod.name, `${ready}/${pod.containers.length}`, pod.phase, '0', humanAge(pod.createdAt)],
    object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: podMetadata(pod) },
  };
}

function table(pods: StoredPod[], resourceVersion: number, withColumns: boolean): Json {
  return {
    kind: 'Table',
    apiVersion: 'meta.k8s.io/v1',
    metadata: { resourceVersion: String(resourceVersion) },
    ...(withColumns ? { columnDefinitions: podColumns } : {}),
    rows: pods.map(podRow),
  };
}

function wantsTable(req: IncomingMessage): boolean {
  return /;\s*as=Table/.test(req.headers.accept ?? '');
}

/** Deterministic JSON ConfigMap of exactly `sizeBytes` bytes (a hash chain fills the data). */
function bigConfigMap(name: string, sizeBytes: number): Buffer {
  const head = `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"${name}","namespace":"default"},"data":{"blob":"`;
  const tail = '"}}';
  const fill = sizeBytes - head.length - tail.length;
  if (fill < 0) throw new Error(`bigObject needs at least ${head.length + tail.length} bytes`);
  const out = Buffer.alloc(sizeBytes);
  let offset = out.write(head);
  let block = createHash('sha256').update(name).digest();
  for (let end = offset + fill; offset < end;) {
    block = createHash('sha256').update(block).digest();
    offset += out.write(block.toString('hex'), offset, Math.min(64, end - offset), 'latin1');
  }
  out.write(tail, offset);
  return out;
}

export async function startFakeApiServer(options: FakeApiServerOptions): Promise<FakeApiServer> {
  const ca = await createTestCa('fake-kube-apiserver-ca');
  const serving = await ca.issue({
    commonName: 'kube-apiserver',
    dnsNames: [...new Set([...options.hostnames, 'localhost', 'kubernetes', 'kubernetes.default.svc'])],
    ipAddresses: ['127.0.0.1'],
  });

  const pods = new Map<string, StoredPod>();
  const logs = new Map<string, string[]>();
  const followers = new Map<string, Set<ServerResponse>>();
  const watchers = new Set<Watcher>();
  const history: Array<WatchEvent & { resourceVersion: number }> = [];
  const bigObjects = new Map<string, Buffer>();
  const sockets = new Set<Socket>();
  const seenIdentities: string[] = [];
  const seenRequests: string[] = [];
  const seenHttpVersions: string[] = [];
  let resourceVersion = 1;
  const startedAt = timestamp(new Date());
  let closing: Promise<void> | undefined;

  const key = (namespace: string, name: string): string => `${namespace}/${name}`;
  const record = (list: string[], entry: string): void => {
    if (list.length >= maxRecorded) list.shift();
    list.push(entry);
  };

  function authenticate(req: IncomingMessage): string | undefined {
    const socket = req.socket as TLSSocket;
    if (socket.authorized) {
      const cn = socket.getPeerCertificate().subject?.CN;
      if (typeof cn === 'string' && cn !== '') return cn;
    }
    const auth = req.headers.authorization ?? '';
    if (options.bearerToken !== undefined && auth === `Bearer ${options.bearerToken}`) {
      return `token:${options.bearerToken}`;
    }
    return undefined;
  }

  function writeEvent(watcher: Watcher, event: WatchEvent): void {
    if (watcher.namespace !== undefined && watcher.namespace !== event.pod.namespace) return;
    if (watcher.name !== undefined && watcher.name !== event.pod.name) return;
    // Like the apiserver, only the first Table event of a watch carries the column definitions.
    const object = watcher.asTable
      ? table([event.pod], event.pod.resourceVersion, !watcher.sentColumns)
      : podObject(event.pod);
    watcher.sentColumns = true;
    watcher.res.write(`${JSON.stringify({ type: event.type, object })}\n`);
  }

  function emit(type: WatchEvent['type'], pod: StoredPod): void {
    const event = { type, pod: { ...pod }, resourceVersion: pod.resourceVersion };
    history.push(event);
    if (history.length > maxHistory) history.shift();
    for (const watcher of watchers) writeEvent(watcher, event);
  }

  function listPods(namespace: string | undefined, name?: string): StoredPod[] {
    return [...pods.values()].filter(
      (p) =>
        (namespace === undefined || p.namespace === namespace) && (name === undefined || p.name === name),
    );
  }

  function servePods(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    namespace: string | undefined,
  ): void {
    const nameSelector = /^metadata\.name=(.+)$/.exec(url.searchParams.get('fieldSelector') ?? '')?.[1];
    const watch = url.searchParams.get('watch');
    if (watch !== 'true' && watch !== '1') {
      const items = listPods(namespace, nameSelector);
      if (wantsTable(req)) return sendJson(res, 200, table(items, resourceVersion, true));
      const list = {
        kind: 'PodList',
        apiVersion: 'v1',
        metadata: { resourceVersion: String(resourceVersion) },
      };
      return sendJson(res, 200, { ...list, items: items.map(podObject) });
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache' });
    res.flushHeaders();
    const watcher: Watcher = {
      namespace,
      name: nameSelector,
      asTable: wantsTable(req),
      sentColumns: false,
      res,
    };
    const since = Number(url.searchParams.get('resourceVersion') ?? '0');
    if (since > 0) {
      for (const event of history) if (event.resourceVersion > since) writeEvent(watcher, event);
    } else {
      for (const pod of listPods(namespace, nameSelector)) writeEvent(watcher, { type: 'ADDED', pod });
    }
    watchers.add(watcher);
    const timeoutSeconds = Number(url.searchParams.get('timeoutSeconds') ?? '0');
    const timer = timeoutSeconds > 0 ? setTimeout(() => res.end(), timeoutSeconds * 1000) : undefined;
    res.on('close', function onWatchClosed() {
      clearTimeout(timer);
      watchers.delete(watcher);
    });
  }

  function serveLog(res: ServerResponse, url: URL, pod: StoredPod): void {
    const id = key(pod.namespace, pod.name);
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-cache' });
    for (const line of logs.get(id) ?? []) res.write(`${line}\n`);
    const follow = url.searchParams.get('follow');
    if (follow !== 'true' && follow !== '1') return void res.end();
    const set = followers.get(id) ?? new Set<ServerResponse>();
    followers.set(id, set);
    set.add(res);
    res.on('close', () => set.delete(res));
  }

  function serveDiscovery(res: ServerResponse, path: string): boolean {
    if (path === '/version') {
      sendJson(res, 200, versionInfo);
    } else if (path === '/api') {
      // Legacy discovery with a plain application/json Content-Type: kubectl asks for the
      // aggregated form first and falls back to /api/v1 when it gets this.
      sendJson(res, 200, { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] });
    } else if (path === '/apis') {
      sendJson(res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [] });
    } else if (path === '/api/v1') {
      sendJson(res, 200, {
        kind: 'APIResourceList',
        apiVersion: 'v1',
        groupVersion: 'v1',
        resources: coreResources,
      });
    } else {
      return false;
    }
    return true;
  }

  function namespaceObject(name: string): Json {
    const metadata = { name, creationTimestamp: startedAt };
    return { kind: 'Namespace', apiVersion: 'v1', metadata, status: { phase: 'Active' } };
  }

  function handleRequest(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'https://fake');
    record(seenRequests, `${req.method ?? 'GET'} ${url.pathname}${url.search}`);
    record(seenHttpVersions, req.httpVersion);
    if (['/healthz', '/livez', '/readyz'].includes(url.pathname)) {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      return void res.end('ok');
    }
    const identity = authenticate(req);
    if (identity === undefined) return sendJson(res, 401, status(401, 'Unauthorized', 'Unauthorized'));
    record(seenIdentities, identity);
    if (req.method !== 'GET') {
      return sendJson(res, 405, status(405, 'MethodNotAllowed', 'the fake apiserver is read-only'));
    }
    if (serveDiscovery(res, url.pathname)) return;

    const parts = url.pathname.split('/').filter(Boolean);
    const notFound = (message = noSuchResource): void => sendJson(res, 404, status(404, 'NotFound', message));
    if (parts[0] !== 'api' || parts[1] !== 'v1') return notFound();
    const [, , collection, namespace, resource, name, subresource, ...rest] = parts;
    if (collection === 'pods' && parts.length === 3) return servePods(req, res, url, undefined);
    if (collection !== 'namespaces') return notFound();
    if (namespace === undefined) {
      const names = new Set(['default', ...[...pods.values()].map((p) => p.namespace)]);
      const items = [...names].map(namespaceObject);
      return sendJson(res, 200, { kind: 'NamespaceList', apiVersion: 'v1', metadata: {}, items });
    }
    if (resource === undefined) return sendJson(res, 200, namespaceObject(namespace));
    if (rest.length > 0) return notFound();
    if (resource === 'configmaps' && name !== undefined && subresource === undefined) {
      const body = namespace === 'default' ? bigObjects.get(name) : undefined;
      if (body === undefined) return notFound(`configmaps "${name}" not found`);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
      return void res.end(body);
    }
    if (resource !== 'pods') return notFound();
    if (name === undefined) return servePods(req, res, url, namespace);
    const pod = pods.get(key(namespace, name));
    if (pod === undefined) return notFound(`pods "${name}" not found`);
    if (subresource === undefined) {
      return sendJson(res, 200, wantsTable(req) ? table([pod], pod.resourceVersion, true) : podObject(pod));
    }
    if (subresource === 'log') return serveLog(res, url, pod);
    if (subresource === 'exec' || subresource === 'attach' || subresource === 'portforward') {
      return sendJson(res, 400, status(400, 'BadRequest', 'Upgrade request required'));
    }
    return notFound();
  }

  function runExec(ws: WebSocket, url: URL): void {
    const command = url.searchParams.getAll('command');
    const flag = (name: string): boolean => ['true', '1'].includes(url.searchParams.get(name) ?? '');
    const send = (ch: number, data: string | Buffer): void => {
      if (ch === channel.stdout && !flag('stdout')) return;
      if (ch === channel.stderr && !flag('stderr')) return;
      ws.send(Buffer.concat([Buffer.from([ch]), Buffer.from(data)]));
    };
    let finished = false;
    const finish = (exitCode: number): void => {
      if (finished) return;
      finished = true;
      const result =
        exitCode === 0
          ? { metadata: {}, status: 'Success' }
          : {
              metadata: {},
              status: 'Failure',
              message: `command terminated with non-zero exit code: exit code ${exitCode}`,
              reason: 'NonZeroExitCode',
              details: { causes: [{ reason: 'ExitCode', message: String(exitCode) }] },
            };
      send(channel.error, JSON.stringify(result));
      ws.close(1000);
    };
    const [program, ...args] = command;
    const script = program === 'sh' && args[0] === '-c' ? (args[1] ?? '') : undefined;
    if (program === 'cat') {
      // Echo stdin until the client half-closes it (v5 close signal), then report success.
      if (!flag('stdin')) return finish(0);
      ws.on('message', function onExecMessage(data: Buffer, isBinary: boolean) {
        if (!isBinary || data.length === 0) return;
        if (data[0] === channel.stdin) send(channel.stdout, data.subarray(1));
        else if (data[0] === channel.close && data[1] === channel.stdin) finish(0);
      });
    } else if (program === 'echo') {
      send(channel.stdout, `${args.join(' ')}\n`);
      finish(0);
    } else if (program === 'true' || program === 'false') {
      finish(program === 'true' ? 0 : 1);
    } else if (script !== undefined && /^exit \d{1,3}$/.test(script)) {
      finish(Number(script.slice(5)));
    } else {
      send(channel.stderr, `${command.join(' ')}: not found\n`);
      finish(127);
    }
  }

  const wss = new WebSocketServer({
    noServer: true,
    handleProtocols: (offered) => execProtocols.find((p) => offered.has(p)) ?? false,
  });

  function handleUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'https://fake');
    record(seenRequests, `${req.method ?? 'GET'} ${url.pathname}${url.search} (upgrade)`);
    const identity = authenticate(req);
    if (identity === undefined) return refuseUpgrade(socket, 401, 'Unauthorized', 'Unauthorized');
    record(seenIdentities, identity);
    const match = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/(exec|attach|portforward)$/.exec(
      url.pathname,
    );
    if (match === null) return refuseUpgrade(socket, 404, 'NotFound', noSuchResource);
    const [, namespace = '', name = '', subresource] = match;
    const pod = pods.get(key(namespace, name));
    if (pod === undefined) return refuseUpgrade(socket, 404, 'NotFound', `pods "${name}" not found`);
    const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
    const isWebSocket = (req.headers.upgrade ?? '').toLowerCase() === 'websocket';
    if (subresource !== 'exec' || !isWebSocket || !execProtocols.some((p) => offered.includes(p))) {
      // See the file comment: SPDY (and SPDY tunnelled in WebSocket) is not implemented.
      return refuseUpgrade(
        socket,
        400,
        'BadRequest',
        `the fake apiserver supports only ${execProtocols.join(', ')} exec`,
      );
    }
    wss.handleUpgrade(req, socket, head, (ws) => runExec(ws, url));
  }

  const tlsOptions = {
    key: serving.keyPem,
    cert: serving.certPem,
    ca: [ca.certPem],
    requestCert: true,
    rejectUnauthorized: false,
  };
  const server = options.http2
    ? createSecureServer({ ...tlsOptions, allowHTTP1: true }, handleRequest as never)
    : createServer(tlsOptions, handleRequest);
  server.on('upgrade', handleUpgrade);
  // Raw TCP sockets, so close() also ends connections still in the TLS handshake.
  server.on('connection', function track(socket: Socket) {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('fake apiserver: no TCP address');
  const port = address.port;

  function storedPod(name: string, namespace: string): StoredPod {
    const pod = pods.get(key(namespace, name));
    if (pod === undefined) throw new Error(`fake apiserver: no pod ${namespace}/${name}`);
    return pod;
  }

  return {
    url: `https://127.0.0.1:${port}`,
    port,
    caCertPem: ca.certPem,
    issueClientCert: (user, groups = []) =>
      ca.issue({ commonName: user, organizations: groups, client: true }),
    seenIdentities,
    seenRequests,
    seenHttpVersions,
    addPod(spec) {
      const namespace = spec.namespace ?? 'default';
      if (pods.has(key(namespace, spec.name))) {
        throw new Error(`fake apiserver: pod ${namespace}/${spec.name} exists`);
      }
      const pod: StoredPod = {
        name: spec.name,
        namespace,
        uid: randomUUID(),
        resourceVersion: ++resourceVersion,
        createdAt: new Date(),
        phase: spec.phase ?? 'Running',
        containers: spec.containers ?? ['main'],
        labels: spec.labels ?? {},
      };
      pods.set(key(namespace, spec.name), pod);
      emit('ADDED', pod);
    },
    modifyPod(name, change, namespace = 'default') {
      const pod = storedPod(name, namespace);
      pod.phase = change.phase ?? pod.phase;
      pod.containers = change.containers ?? pod.containers;
      pod.labels = change.labels ?? pod.labels;
      pod.resourceVersion = ++resourceVersion;
      emit('MODIFIED', pod);
    },
    deletePod(name, namespace = 'default') {
      const pod = storedPod(name, namespace);
      pods.delete(key(namespace, name));
      pod.resourceVersion = ++resourceVersion;
      emit('DELETED', pod);
      for (const res of followers.get(key(namespace, name)) ?? []) res.end();
      followers.delete(key(namespace, name));
    },
    setLog(pod, lines, namespace = 'default') {
      logs.set(key(namespace, pod), [...lines]);
    },
    appendLog(pod, line, namespace = 'default') {
      const id = key(namespace, pod);
      const lines = logs.get(id) ?? [];
      lines.push(line);
      logs.set(id, lines);
      for (const res of followers.get(id) ?? []) res.write(`${line}\n`);
    },
    bigObject(sizeBytes, name = 'big') {
      const body = bigConfigMap(name, sizeBytes);
      bigObjects.set(name, body);
      const sha256 = createHash('sha256').update(body).digest('hex');
      return { path: `/api/v1/namespaces/default/configmaps/${name}`, sizeBytes, sha256 };
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        // Long-lived responses and upgraded sockets never end by themselves: end them all.
        for (const ws of wss.clients) ws.terminate();
        wss.close();
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
        if ('closeAllConnections' in server) server.closeAllConnections();
      });
      return closing;
    },
  };
}
