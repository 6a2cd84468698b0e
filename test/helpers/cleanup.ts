/**
 * Where helpers register their teardown: the current test's `onTestFinished`, or, while a
 * `sharedFixture` is being built in a beforeAll, that fixture's teardown after the describe
 * block's last test. One rule for every helper that starts a process, opens a server or makes
 * a directory, so each works in a test and in a shared fixture alike.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { beforeAll, onTestFinished } from 'vitest';

type Teardown = () => unknown;

// The teardown list of the shared fixture being built; it follows the setup's async calls.
const fixtureTeardowns = new AsyncLocalStorage<Teardown[]>();

/** Runs `teardown` when the current test finishes, or with the shared fixture being built. */
export function defer(teardown: Teardown): void {
  const list = fixtureTeardowns.getStore();
  if (list !== undefined) list.push(teardown);
  else
    onTestFinished(async () => {
      await teardown();
    });
}

/** Runs every teardown, last registered first; throws the first failure once all have run. */
async function runTeardowns(list: Teardown[]): Promise<void> {
  let failure: unknown;
  for (const teardown of list.splice(0).reverse()) {
    try {
      await teardown();
    } catch (err) {
      failure ??= err;
    }
  }
  if (failure !== undefined) throw failure;
}

/** Runs `fn` so that what it registers with `defer` belongs to the shared fixture, not the test. */
export type FixtureScope = <R>(fn: () => Promise<R>) => Promise<R>;

/**
 * One fixture for every test of the enclosing describe block: `setup` runs in its beforeAll, and
 * what the helpers it calls register with `defer` is torn down after the block's last test (or
 * at once if `setup` fails). `setup` gets a FixtureScope for what the fixture starts later, from
 * inside a test (a replica replacing one the test stopped). Returns the getter tests call.
 */
export function sharedFixture<T>(setup: (scope: FixtureScope) => Promise<T>): () => T {
  let state: { value: T } | undefined;
  beforeAll(async () => {
    const teardowns: Teardown[] = [];
    const scope: FixtureScope = (fn) => fixtureTeardowns.run(teardowns, fn);
    try {
      state = { value: await fixtureTeardowns.run(teardowns, () => setup(scope)) };
    } catch (err) {
      await runTeardowns(teardowns);
      throw err;
    }
    return async () => {
      state = undefined;
      await runTeardowns(teardowns);
    };
  });
  return () => {
    if (state === undefined) throw new Error('a shared fixture was used outside its describe block');
    return state.value;
  };
}
