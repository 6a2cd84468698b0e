/** Runs `fn(i)` for i < count with at most `limit` in flight; returns { ok, errors, firstError }. */
export async function pool(count, limit, fn) {
  let next = 0;
  let ok = 0;
  let errors = 0;
  let firstError;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      try {
        await fn(i);
        ok += 1;
      } catch (err) {
        errors += 1;
        firstError ??= err.message;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  return { ok, errors, firstError };
}
