/**
 * What both CLIs' bin.ts do, once: hand a command line the process's argv, env, cwd and stdio
 * (bin.ts reads them: only bin.ts and config.ts may) and a shutdown signal that SIGTERM/SIGINT abort (a graceful drain), exit at once on a second
 * signal, and exit with the command's code. The commands themselves (cli.ts) see only CliIo,
 * so tests run them in-process.
 */

/** What a command line is given instead of `process`. */
export interface CliIo {
  /** Arguments after the program name, e.g. process.argv.slice(2). */
  argv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Aborted on SIGTERM/SIGINT: a running command drains and resolves. */
  shutdown: AbortSignal;
  /** Where log lines go instead of stdout (tests). */
  logDestination?: NodeJS.WritableStream;
}

/** Resolves once `signal` is aborted (at once if it already is): a command waits for its shutdown. */
export function whenAborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}

/** How long a finished command may leave stray handles before the process exits anyway. */
const EXIT_GRACE_MS = 2_000;

/**
 * Runs `run` with the process's own argv, env and stdio (which bin.ts reads and passes in) and
 * a shutdown signal wired to SIGTERM/SIGINT, then exits with its code. Only bin.ts calls it.
 */
export async function runMain(
  name: string,
  run: (io: CliIo) => Promise<number>,
  processIo: Omit<CliIo, 'shutdown' | 'logDestination'>,
): Promise<void> {
  const shutdown = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    if (shutdown.signal.aborted) {
      process.stderr.write(`${name}: second ${signal}, exiting without draining\n`);
      process.exit(1);
    }
    shutdown.abort(signal);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const code = await run({ ...processIo, shutdown: shutdown.signal });
  process.exitCode = code;
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  // Everything is closed by now; should a stray handle linger, do not hang the pod's shutdown.
  setTimeout(() => process.exit(code), EXIT_GRACE_MS).unref();
}
