export * from './schema.js';
export * from './values.js';
export * from './resolve.js';
export * from './cli-options.js';
export * from './logger.js';
export * from './cli-main.js';
