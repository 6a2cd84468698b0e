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
 */
import { ensureSshd, SSH_CIPHERS, startSshd, startSshReverse } from './ssh.js';
import { startChild } from './procs.js';
import { startTunnel } from './tunnel.js';
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

const role = (child, withChildren = false) => ({ pid: child.pid, withChildren });

/** Starts the named paths; returns { [name]: path } and a stop() for all of them. */
export async function startPaths(ctx, names) {
  const { upstream, dir } = ctx;
  const paths = {};
  const stops = [];
  let sshd;
  for (const name of names) {
    ctx.log(`  starting path ${name}`);
    if (name === 'direct') {
      paths.direct = { name, port: upstream.port, roles: {} };
    } else if (name === 'relay') {
      const r = await startRelay('relay', upstream.port);
      paths.relay = { name, port: r.port, roles: { relay: role(r.child) } };
      stops.push(() => r.child.stop());
    } else if (name === 'relay2') {
      const b = await startRelay('relay2-b', upstream.port);
      const a = await startRelay('relay2-a', b.port);
      paths.relay2 = { name, port: a.port, roles: { 'relay-1': role(a.child), 'relay-2': role(b.child) } };
      stops.push(
        () => a.child.stop(),
        () => b.child.stop(),
      );
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
      });
      paths[name] = { name, port: ssh.port, roles: { sshd: role(sshd.child, true), ssh: role(ssh.child) } };
      stops.unshift(() => ssh.child.stop());
    } else if (name === 'tunnel' || name === 'tunnel-b') {
      const root = name === 'tunnel' ? undefined : ctx.opts.tunnelB;
      const t = await startTunnel({
        dir,
        name,
        upstreamPort: upstream.port,
        profileDir: ctx.profileDir,
        root,
      });
      paths[name] = {
        name,
        port: t.port,
        adminPort: t.server.adminPort,
        roles: { server: role(t.server.child), agent: role(t.agent) },
        handle: t,
      };
      stops.unshift(() => t.stop());
    } else {
      throw new Error(`unknown path ${name}`);
    }
  }
  return {
    paths,
    async stop() {
      for (const s of stops) await s();
    },
  };
}
