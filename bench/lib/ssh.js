/**
 * OpenSSH `ssh -R` as a reference reverse tunnel: our own sshd on 127.0.0.1 (host key, config and
 * authorized key in a temporary directory), and an ssh client that asks it to listen on a port
 * and forward every connection back to the upstream. The user connects to sshd's listener; the
 * bytes cross the ssh connection to the ssh client, which dials the upstream (the same reverse
 * direction as the tunnel: the ssh client plays the agent, sshd the public server).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { cleanEnv, freePort, startChild } from './procs.js';

const SSHD = '/usr/sbin/sshd';
export const SSH_CIPHERS = {
  'ssh-aes': 'aes128-gcm@openssh.com',
  'ssh-chacha': 'chacha20-poly1305@openssh.com',
};

/** Installs Debian's openssh-server when sshd is missing (the bench runs as root on Debian). */
export function ensureSshd(log) {
  if (fs.existsSync(SSHD)) return;
  log('sshd is missing: apt-get install -y openssh-server');
  const env = cleanEnv({ DEBIAN_FRONTEND: 'noninteractive' });
  const install = () =>
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'openssh-server'], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 300_000,
    });
  try {
    install();
  } catch {
    execFileSync('apt-get', ['update', '-qq'], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 300_000,
    });
    install();
  }
  if (!fs.existsSync(SSHD)) throw new Error('openssh-server installed but /usr/sbin/sshd is still missing');
}

export function sshVersion() {
  try {
    return execFileSync('ssh', ['-V'], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' }).trim();
  } catch (err) {
    return String(err.stderr ?? '').trim() || 'unknown';
  }
}

/** Starts sshd on 127.0.0.1:<free port>; returns { child, port, keyFile }. */
export async function startSshd(dir) {
  const hostKey = path.join(dir, 'ssh_host_ed25519_key');
  const userKey = path.join(dir, 'id_ed25519');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', hostKey]);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', userKey]);
  fs.writeFileSync(path.join(dir, 'authorized_keys'), fs.readFileSync(`${userKey}.pub`), { mode: 0o600 });
  // Privilege separation needs this directory; the package's service normally creates it.
  fs.mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const config = path.join(dir, 'sshd_config');
    fs.writeFileSync(
      config,
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${hostKey}`,
        `PidFile ${path.join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
        'PermitRootLogin yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'UseDNS no',
        'AllowTcpForwarding yes',
        'GatewayPorts no',
        `Ciphers ${Object.values(SSH_CIPHERS).join(',')}`,
        'MaxStartups 100',
        'LogLevel ERROR',
        '',
      ].join('\n'),
    );
    const child = startChild('sshd', SSHD, ['-D', '-e', '-f', config]);
    // sshd -D prints nothing when it is fine: probe the port until it answers with its banner.
    const up = await waitForBanner(port, child);
    if (up) return { child, port, keyFile: userKey };
    await child.stop();
  }
  throw new Error('sshd did not start');
}

async function waitForBanner(port, child) {
  for (let i = 0; i < 100 && child.alive; i++) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('data', (d) => {
        s.destroy();
        resolve(d.toString().startsWith('SSH-'));
      });
      s.once('error', () => resolve(false));
      s.setTimeout(1000, () => {
        s.destroy();
        resolve(false);
      });
    });
    if (ok) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/**
 * Starts `ssh -N -R 127.0.0.1:0:127.0.0.1:<upstreamPort>` to sshd (or to `viaPort`, e.g. a delay
 * relay in front of sshd) with one cipher; resolves with the port sshd listens on for users.
 * With `rawUpstreamPort` the same ssh process also forwards a second port to the raw upstream,
 * as one tunnel agent serves both routes (`rawPort` in the result); an idle forward costs no CPU,
 * so per-process CPU of a measurement still belongs to the one forward in use.
 */
export async function startSshReverse({
  name,
  sshdPort,
  viaPort,
  keyFile,
  cipher,
  upstreamPort,
  rawUpstreamPort,
}) {
  const forwards = [upstreamPort, ...(rawUpstreamPort ? [rawUpstreamPort] : [])];
  const child = startChild(name, 'ssh', [
    '-N',
    '-T',
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    'UserKnownHostsFile=/dev/null',
    '-o',
    'BatchMode=yes',
    '-o',
    'ExitOnForwardFailure=yes',
    '-o',
    'Compression=no',
    '-o',
    'ServerAliveInterval=0',
    '-o',
    'LogLevel=INFO',
    '-c',
    cipher,
    ...forwards.flatMap((p) => ['-R', `127.0.0.1:0:127.0.0.1:${p}`]),
    '-p',
    String(viaPort ?? sshdPort),
    '-i',
    keyFile,
    'root@127.0.0.1',
  ]);
  // ssh logs "Allocated port <listen> for remote forward to 127.0.0.1:<target>" once per -R.
  const allocated = async (target) => {
    const re = new RegExp(`Allocated port \\d+ for remote forward to 127\\.0\\.0\\.1:${target}(?!\\d)`);
    const line = await child.waitForLine(re, 20_000);
    return Number(/Allocated port (\d+)/.exec(line)[1]);
  };
  const port = await allocated(upstreamPort);
  const rawPort = rawUpstreamPort ? await allocated(rawUpstreamPort) : undefined;
  return { child, port, rawPort };
}
