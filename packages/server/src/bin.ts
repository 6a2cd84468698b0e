/**
 * `tunnel-server`: the only place besides config.ts that touches process.argv and process.env.
 * SIGTERM/SIGINT start a graceful drain (GoAway, open streams finish within drainTimeoutMs);
 * a second signal exits at once.
 */
import { runCli } from './cli.js';

const shutdown = new AbortController();

function onSignal(signal: NodeJS.Signals): void {
  if (shutdown.signal.aborted) {
    process.stderr.write(`tunnel-server: second ${signal}, exiting without draining\n`);
    process.exit(1);
  }
  shutdown.abort(signal);
}

process.on('SIGTERM', onSignal);
process.on('SIGINT', onSignal);

const code = await runCli({
  argv: process.argv.slice(2),
  env: process.env,
  cwd: process.cwd(),
  stdout: process.stdout,
  stderr: process.stderr,
  shutdown: shutdown.signal,
});
process.exitCode = code;
process.off('SIGTERM', onSignal);
process.off('SIGINT', onSignal);
// Everything is closed by now; should a stray handle linger, do not hang the pod's shutdown.
setTimeout(() => process.exit(code), 2_000).unref();
