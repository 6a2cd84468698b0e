import type { IncomingMessage } from 'node:http';

/**
 * The path of a request's target, or undefined when it is not one `URL` accepts (`//%` and
 * other garbage from the internet): callers answer 400 instead of throwing in a handler.
 */
export function requestPath(req: IncomingMessage): string | undefined {
  try {
    return new URL(req.url ?? '/', 'http://request.invalid').pathname;
  } catch {
    return undefined;
  }
}
