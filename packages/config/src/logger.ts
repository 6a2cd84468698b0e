import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger } from 'pino';

export interface LoggerConfig {
  level: string;
  format: 'json' | 'pretty';
  /** Component name on every line: `tunnel-server` or `tunnel-client`. */
  name: string;
  /** For tests: where lines go instead of stdout. */
  destination?: NodeJS.WritableStream;
}

/**
 * Secrets never reach a log line: tokens, keys and Authorization headers are replaced, wherever
 * they sit in the logged object.
 */
export const REDACT_PATHS = [
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'req.headers.authorization',
  'privateKey',
  '*.privateKey',
  'keyPem',
  '*.keyPem',
];

export function createLogger(config: LoggerConfig): Logger {
  const options: LoggerOptions = {
    name: config.name,
    level: config.level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (config.format === 'pretty' && !config.destination) {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: false } } });
  }
  return config.destination ? pino(options, config.destination) : pino(options);
}
