/**
 * `tunnel-client`: with config.ts, the only place that touches the process (argv, env, signals).
 * SIGTERM/SIGINT start a graceful drain (GoAway, open streams finish within drainTimeoutMs);
 * a second signal exits at once.
 */
import { runMain } from '@cluster-tunnel/config';
import { runCli } from './cli.js';

await runMain('tunnel-client', runCli, {
  argv: process.argv.slice(2),
  env: process.env,
  cwd: process.cwd(),
  stdout: process.stdout,
  stderr: process.stderr,
});
