/** Types of client-hello-capture.js, for the tests. */
import type { ConnectionOptions } from 'node:tls';

export function captureClientHello(options?: ConnectionOptions): Promise<Buffer>;
