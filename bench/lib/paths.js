/**
 * The data paths compared. Each carries the same TLS session from the bench's TLS client
 * (SNI cluster-bench.proxy.localhost) to the one upstream HTTPS server; what differs is what
 * sits in between:
 *
 *   direct      client → upstream
 *   relay       client → Node relay (socket.pipe) → upstream
 *   relay2      client → relay → relay → upstream (two Node processes: the ceiling for any
 *               design with two Node processes in the data path, as the tunnel has)
 *   ssh-aes     client → sshd's -R listener ═ssh (aes128-gcm)═ ssh client → upstream
 *   ssh-chacha  the same with chacha20-poly1305
 *   tunnel      client → tunnel-server (SNI passthrough) ═yamux/WebSocket/TLS═ tunnel-client → upstream
 *
 * A path is { name, port, roles: { role: { pid, withChildren } } }: where the client connects and
 * which processes carry its bytes (for CPU and memory accounting).
 *
 * For the raw-TCP figures every path has a raw twin of the same name (`raw: true`), ending at
 * the raw upstream (plain HTTP over TCP) instead: direct to it, its own relay processes, a second
 * -R forward of the same ssh process, and the tunnel's TCP route (the same server and agent,
 * whose agent also holds the route `raw`). The same name keeps one set of rows and colours.
 */
import { connectRaw } from './client.js';
import { ensureSshd, SSH_CIPHERS, startSshd, startSshReverse } from './ssh.js';
import { startChild, waitUntil } from './procs.js';
import { NO_TCP_ROUTE, RAW_ROUTE_LABEL, startTunnel, supportsTcpRoute } from './tunnel.js';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const LIB = path.dirname(fileURLToPath(import.meta.url));

export const ALL_PATHS = ['direct', 'relay', 'relay2', 'ssh-aes', 'ssh-chacha', 'tunnel'];

export const PATH_NOTES = {
  direct: 'client → upstream on 127.0.0.1',
  relay: 'client → Node relay (socket.pipe) → upstream',
  relay2: 'client → relay → relay → upstream (two Node processes in the data path)',
  'ssh-aes': 'client → sshd -R listener → ssh (aes128-gcm@openssh.com) → upstream',
  'ssh-chacha': 'client → sshd -R listener → ssh (chacha20-poly1305@openssh.com) → upstream',
  tunnel:
    'client → tunnel-server (TLS passthrough by SNI) → yamux over WebSocket+TLS → tunnel-client → upstream',
  'tunnel-b': 'the tunnel path built from another checkout (--tunnel-b <dir>): an A/B comparison of a change',
  'delay-relay': 'client → delay relay (20 ms each way) → upstream: the delay relay alone',
  'tunnel-delay': 'tunnel with the delay relay between tunnel-client and tunnel-server',
  'ssh-aes-delay': 'ssh -R (aes128-gcm) with the delay relay between ssh and sshd',
  'ssh-chacha-delay': 'ssh -R (chacha20-poly1305) with the delay relay between ssh and sshd',
};

/** Starts a relay child; `delayMs` > 0 makes it the delaying relay. */
export async function startRelay(name, targetPort, delayMs = 0) {
  const child = startChild(name, process.execPath, [
    path.join(LIB, 'relay.js'),
    '--target',
    String(targetPort),
    '--delay-ms',
    String(delayMs),
  ]);
  const line = await child.waitForLine(/^listening \d+/);
  return { child, port: Number(line.split(' ')[1]) };
}

/** What the raw twin of each path is (the report lists them under the raw figures). */
export const RAW_PATH_NOTES = {
  direct: 'client → raw upstream (plain HTTP/1.1 over TCP) on 127.0.0.1',
  relay: 'client → its own Node relay → raw upstream',
  relay2: 'client → relay → relay (their own two processes) → raw upstream',
  'ssh-aes':
    'client → sshd -R listener → the same ssh process (aes128-gcm, a second -R forward) → raw upstream',
  'ssh-chacha':
    'client → sshd -R listener → the same ssh process (chacha20-poly1305, a second -R forward) → raw upstream',
  tunnel: `client → tunnel-server TCP route (--tcp-route ${RAW_ROUTE_LABEL}=…) → yamux over WebSocket+TLS → the same tunnel-client (route raw) → raw upstream`,
  'tunnel-b': 'the raw tunnel path built from another checkout (--tunnel-b <dir>)',
};

const role = (child, withChildren = false) => ({ pid: child.pid, withChildren });

/** One relay (or, with `hops` 2, two in series) in front of `targetPort`: { port, roles, stops }. */
async function startRelays(name, targetPort, hops) {
  if (hops === 1) {
    const r = await startRelay(name, targetPort);
    return { port: r.port, roles: { relay: role(r.child) }, stops: [() => r.child.stop()] };
  }
  const b = await startRelay(`${name}-b`, targetPort);
  const a = await startRelay(`${name}-a`, b.port);
  return {
    port: a.port,
    roles: { 'relay-1': role(a.child), 'relay-2': role(b.child) },
    stops: [() => a.child.stop(), () => b.child.stop()],
  };
}

/**
 * Waits until a raw connection through the tunnel's TCP route gets an answer from the raw
 * upstream; returns undefined when it does, else why not (the raw tunnel path is then skipped,
 * the TLS paths still run).
 */
async function probeRawRoute(port) {
  try {
    await waitUntil(
      `an answer through the TCP route on port ${port}`,
      async () => {
        const socket = await connectRaw(port, 2_000);
        socket.destroy();
        return true;
      },
      10_000,
      200,
    );
    return undefined;
  } catch (err) {
    return `the TCP route did not carry a request: ${err.message}`;
  }
}

/**
 * Starts the named paths; returns { paths, rawPaths, rawSkipped, stop() }. With `rawUpstream`
 * ({ port }) every path also gets its raw twin in `rawPaths`; a raw tunnel path that cannot run
 * (a build without --tcp-route) is left out, with the reason in `rawSkipped[name]`.
 */
export async function startPaths(ctx, names, rawUpstream) {
  const { upstream, dir } = ctx;
  const paths = {};
  const rawPaths = {};
  const rawSkipped = {};
  const stops = [];
  let sshd;
  for (const name of names) {
    ctx.log(`  starting path ${name}${rawUpstream ? ' (and its raw twin)' : ''}`);
    if (name === 'direct') {
      paths.direct = { name, port: upstream.port, roles: {} };
      if (rawUpstream) rawPaths.direct = { name, port: rawUpstream.port, roles: {}, raw: true };
    } else if (name === 'relay' || name === 'relay2') {
      const hops = name === 'relay' ? 1 : 2;
      const r = await startRelays(name, upstream.port, hops);
      paths[name] = { name, port: r.port, roles: r.roles };
      stops.push(...r.stops);
      if (rawUpstream) {
        const rr = await startRelays(`${name}-raw`, rawUpstream.port, hops);
        rawPaths[name] = { name, port: rr.port, roles: rr.roles, raw: true };
        stops.push(...rr.stops);
      }
    } else if (name in SSH_CIPHERS) {
      if (!sshd) {
        ensureSshd(ctx.log);
        sshd = await startSshd(dir);
        ctx.sshd = sshd;
        stops.push(() => sshd.child.stop());
      }
      const ssh = await startSshReverse({
        name,
        sshdPort: sshd.port,
        keyFile: sshd.keyFile,
        cipher: SSH_CIPHERS[name],
        upstreamPort: upstream.port,
        rawUpstreamPort: rawUpstream?.port,
      });
      const roles = { sshd: role(sshd.child, true), ssh: role(ssh.child) };
      paths[name] = { name, port: ssh.port, roles };
      if (rawUpstream) rawPaths[name] = { name, port: ssh.rawPort, roles, raw: true };
      stops.unshift(() => ssh.child.stop());
    } else if (name === 'tunnel' || name === 'tunnel-b') {
      const root = name === 'tunnel' ? undefined : ctx.opts.tunnelB;
      const t = await startTunnel({
        dir,
        name,
        upstreamPort: upstream.port,
        rawUpstreamPort: rawUpstream?.port,
        profileDir: ctx.profileDir,
        root,
      });
      const common = {
        name,
        adminPort: t.server.adminPort,
        roles: { server: role(t.server.child), agent: role(t.agent) },
        handle: t,
      };
      paths[name] = { ...common, port: t.port };
      stops.unshift(() => t.stop());
      if (rawUpstream) {
        if (t.rawPort === undefined) {
          rawSkipped[name] = supportsTcpRoute(root) ? 'the tunnel did not open its TCP route' : NO_TCP_ROUTE;
        } else {
          const problem = await probeRawRoute(t.rawPort);
          if (problem) rawSkipped[name] = problem;
          else rawPaths[name] = { ...common, port: t.rawPort, raw: true };
        }
        if (rawSkipped[name]) ctx.log(`  raw ${name} path skipped: ${rawSkipped[name]}`);
      }
    } else {
      throw new Error(`unknown path ${name}`);
    }
  }
  return {
    paths,
    rawPaths,
    rawSkipped,
    async stop() {
      for (const s of stops) await s();
    },
  };
}
