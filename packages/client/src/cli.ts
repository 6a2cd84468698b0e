/**
 * The `tunnel-client` command line: commander with every configuration key as a flag (from
 * CLIENT_CONFIG_SCHEMA), `--check-config` and `--version`. bin.ts hands in argv, env and a
 * shutdown signal; this module never reads them from `process` itself.
 *
 * Exit codes: 0 normal (including a drained shutdown), 1 the agent could not start, 2 a usage
 * or configuration problem.
 */
import { Command, CommanderError } from 'commander';
import { isTunnelError } from '@cluster-tunnel/protocol';
import {
  addConfigOptions,
  createLogger,
  redactConfig,
  type CliIo,
  whenAborted,
} from '@cluster-tunnel/config';
import { CLIENT_CONFIG_SCHEMA, resolveClientConfig } from './config.js';
import type { ClientConfig } from './config.js';
import { AGENT_VERSION, TunnelAgent } from './tunnel-agent.js';

export const EXIT_OK = 0;
export const EXIT_START_FAILED = 1;
export const EXIT_USAGE = 2;

export interface ClientCliIo extends CliIo {
  /** Called once the agent has started (tests). */
  onStarted?: (agent: TunnelAgent) => void;
}

function buildProgram(io: ClientCliIo): Command {
  const program = new Command('tunnel-client')
    .description(
      'cluster-tunnel agent: dials the tunnel server over WebSocket and forwards its streams to in-cluster targets',
    )
    .version(AGENT_VERSION, '--version', 'print the version and exit')
    .option(
      '--check-config',
      'resolve and validate the configuration, print it as JSON (secrets redacted), exit',
    )
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) });
  addConfigOptions(program, CLIENT_CONFIG_SCHEMA);
  return program;
}

export async function runCli(io: ClientCliIo): Promise<number> {
  const program = buildProgram(io);
  try {
    program.parse([...io.argv], { from: 'user' });
  } catch (err) {
    // --help and --version exit 0; unknown flags and missing values are usage errors.
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    throw err;
  }
  const opts = program.opts();
  let config: Readonly<ClientConfig>;
  try {
    config = resolveClientConfig({ flags: opts, env: io.env, cwd: io.cwd });
  } catch (err) {
    if (!isTunnelError(err, 'TUN_ERR_CONFIG')) throw err;
    io.stderr.write(`tunnel-client: ${err.message}\n`);
    return EXIT_USAGE;
  }
  const loggable = redactConfig(config, CLIENT_CONFIG_SCHEMA);
  if (opts.checkConfig === true) {
    // Unset keys print as null: the output lists every key, so it doubles as a reference.
    const shown = JSON.stringify(loggable, (_key, value: unknown) => (value === undefined ? null : value), 2);
    io.stdout.write(`${shown}\n`);
    return EXIT_OK;
  }
  const logger = createLogger({
    level: config.logLevel,
    format: config.logFormat,
    name: 'tunnel-client',
    ...(io.logDestination === undefined ? {} : { destination: io.logDestination }),
  });
  logger.info({ version: AGENT_VERSION, config: loggable }, 'agent starting');
  const agent = new TunnelAgent(config, { logger });
  try {
    await agent.start();
  } catch (err) {
    logger.error({ err }, 'agent failed to start');
    agent.destroy();
    return EXIT_START_FAILED;
  }
  io.onStarted?.(agent);
  await whenAborted(io.shutdown);
  logger.info({ signal: String(io.shutdown.reason) }, 'shutdown requested');
  await agent.close();
  return EXIT_OK;
}
