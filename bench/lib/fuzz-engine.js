/**
 * A small mutation fuzzer, coverage-guided where it can afford to be (bench/fuzz.js): inputs
 * are mutations of a corpus that starts from a target's seeds. In the guided phase every input
 * runs with V8's precise block coverage on (node:inspector) and joins the corpus when it reaches
 * a block of the target's files no input reached before; the fast phase then runs mutations of
 * that corpus without coverage, millions of them. Deterministic for a seed; bounded in cases
 * and in seconds.
 */
import { Session } from 'node:inspector/promises';
import { fileURLToPath } from 'node:url';

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values that break length fields and counters. */
const INTERESTING = [
  0, 1, 2, 3, 4, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff,
];
const MAX_INPUT_BYTES = 128 * 1024;

/** One to four random edits of `input`; `other` is another corpus entry, for splicing. */
export function mutate(input, other, random) {
  let buf = Buffer.from(input);
  const pick = (n) => Math.floor(random() * n);
  const edits = 1 + pick(4);
  for (let e = 0; e < edits; e++) {
    const at = pick(buf.length + 1);
    switch (pick(9)) {
      case 0: // flip a bit
        if (buf.length > 0) buf[pick(buf.length)] ^= 1 << pick(8);
        break;
      case 1: // a random byte
        if (buf.length > 0) buf[pick(buf.length)] = pick(256);
        break;
      case 2: {
        // an interesting value, 1, 2 or 4 bytes big-endian
        const value = INTERESTING[pick(INTERESTING.length)];
        const width = [1, 2, 4][pick(3)];
        if (buf.length >= width) {
          const pos = pick(buf.length - width + 1);
          if (width === 1) buf[pos] = value & 0xff;
          else if (width === 2) buf.writeUInt16BE(value & 0xffff, pos);
          else buf.writeUInt32BE(value >>> 0, pos);
        }
        break;
      }
      case 3: // insert random bytes
        buf = Buffer.concat([
          buf.subarray(0, at),
          Buffer.from(Array.from({ length: 1 + pick(16) }, () => pick(256))),
          buf.subarray(at),
        ]);
        break;
      case 4: // delete a range
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + pick(32))]);
        break;
      case 5: {
        // duplicate a range
        const len = 1 + pick(64);
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at, at + len), buf.subarray(at)]);
        break;
      }
      case 6: // splice in part of another input
        buf = Buffer.concat([buf.subarray(0, at), other.subarray(pick(other.length + 1))]);
        break;
      case 7: // truncate
        buf = buf.subarray(0, at);
        break;
      default: // append another input whole
        buf = Buffer.concat([buf, other]);
    }
  }
  return buf.length > MAX_INPUT_BYTES ? buf.subarray(0, MAX_INPUT_BYTES) : buf;
}

/** JSON values that break code reading a peer's JSON: names every object inherits, wrong types. */
const INTERESTING_JSON = [
  'toString',
  '__proto__',
  'hasOwnProperty',
  'constructor',
  'valueOf',
  'register',
  'error',
  'TUN_ERR_PROTOCOL',
  '',
  'x'.repeat(300),
  null,
  true,
  0,
  -1,
  1e308,
  [],
  {},
  { toString: 1 },
  [null],
];

/**
 * A structural edit of a JSON document: a value anywhere in the tree, or a key, replaced by an
 * interesting one. Byte edits rarely keep JSON valid, so without this the code that reads the
 * parsed value is seldom reached. Returns undefined when `text` is not JSON.
 */
export function mutateJson(text, random) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch {
    return undefined;
  }
  const pick = (n) => Math.floor(random() * n);
  const value = () => JSON.parse(JSON.stringify(INTERESTING_JSON[pick(INTERESTING_JSON.length)]));
  const names = INTERESTING_JSON.filter((v) => typeof v === 'string');
  const name = () => names[pick(names.length)];
  if (doc === null || typeof doc !== 'object') return JSON.stringify(value());
  // Walk down a random path, then edit there.
  let node = doc;
  for (let depth = 0; depth < 4; depth++) {
    const keys = Object.keys(node);
    if (keys.length === 0 || random() < 0.4) break;
    const child = node[keys[pick(keys.length)]];
    if (child === null || typeof child !== 'object') break;
    node = child;
  }
  const keys = Object.keys(node);
  const key = keys.length > 0 && random() < 0.8 ? keys[pick(keys.length)] : name();
  if (random() < 0.2 && keys.length > 0) {
    // Rename a key (to an inherited name, say).
    const v = node[key];
    delete node[key];
    node[name()] = v;
  } else {
    node[key] = value();
  }
  return JSON.stringify(doc);
}

function sourceKey(url) {
  const file = url.startsWith('file:') ? fileURLToPath(url.replace(/\?.*$/, '')) : url.replace(/\?.*$/, '');
  return file.replace(/\/(dist|src)\//, '/').replace(/\.(js|ts)$/, '');
}

/** Block ranges with a non-zero count in `files`, as strings, from one coverage snapshot. */
function coveredBlocks(result, urls) {
  const blocks = [];
  for (const script of result.result) {
    // The bench runs the build (file URLs); the test runner its transformed sources (paths, maybe
    // with a query): compare paths without extension, so either names the same file.
    if (!urls.has(sourceKey(script.url))) continue;
    for (const fn of script.functions) {
      for (const range of fn.ranges) {
        if (range.count > 0) blocks.push(`${script.url}:${range.startOffset}-${range.endOffset}`);
      }
    }
  }
  return blocks;
}

/**
 * Fuzzes one target. Returns { cases, guidedCases, corpus, blocks, failures, slowestMs,
 * casesPerSecond, seconds }. `failures` holds { reason, input } (at most 20).
 */
export async function fuzzTarget(
  target,
  { seed = 1, guidedCases = 0, cases = 10_000, seconds = 60, onProgress } = {},
) {
  const random = seededRandom(seed);
  const corpus = [...(await target.seeds())];
  const failures = [];
  let slowestMs = 0;
  let done = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const record = (reason, input) => {
    if (failures.length < 20) failures.push({ reason, input: Buffer.from(input) });
  };
  const runOne = async (input) => {
    const t0 = performance.now();
    let reason;
    try {
      reason = await target.run(input, random);
    } catch (err) {
      reason = `run threw ${err?.name}: ${err?.message}`;
    }
    slowestMs = Math.max(slowestMs, performance.now() - t0);
    done++;
    // Let the event loop turn now and then: what a case left to timers and setImmediate (a
    // session's corked writes, its close deadline) must run, or it piles up until the heap is full.
    if (done % 256 === 0) await new Promise((resolve) => setImmediate(resolve));
    if (reason) record(reason, input);
  };
  // A target may mutate its own way (structure-aware), falling back to byte edits.
  const edit = target.mutate ?? mutate;
  const next = () =>
    edit(corpus[Math.floor(random() * corpus.length)], corpus[Math.floor(random() * corpus.length)], random);

  // Guided phase: keep inputs that reach new blocks of the target's files.
  const seen = new Set();
  if (guidedCases > 0) {
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });
    const urls = new Set(target.files.map((f) => sourceKey(f)));
    for (const seedInput of corpus) {
      await runOne(seedInput);
      for (const b of coveredBlocks(await session.post('Profiler.takePreciseCoverage'), urls)) seen.add(b);
    }
    for (let i = 0; i < guidedCases && performance.now() < deadline; i++) {
      const input = next();
      await runOne(input);
      let fresh = false;
      for (const b of coveredBlocks(await session.post('Profiler.takePreciseCoverage'), urls)) {
        if (!seen.has(b)) {
          seen.add(b);
          fresh = true;
        }
      }
      if (fresh) corpus.push(input);
      if (i % 2000 === 0) onProgress?.({ phase: 'guided', done, corpus: corpus.length, blocks: seen.size });
    }
    await session.post('Profiler.stopPreciseCoverage');
    await session.post('Profiler.disable');
    session.disconnect();
  }
  const guided = done;
  // Fast phase: mutations of the grown corpus.
  while (done < guided + cases && performance.now() < deadline) {
    await runOne(next());
    if (done % 200_000 === 0) onProgress?.({ phase: 'fast', done, corpus: corpus.length, blocks: seen.size });
  }
  const elapsed = (performance.now() - started) / 1000;
  return {
    cases: done,
    guidedCases: guided,
    corpus: corpus.length,
    blocks: seen.size,
    failures,
    slowestMs,
    seconds: elapsed,
    casesPerSecond: done / elapsed,
  };
}
