/**
 * The documentation's tables are checked against the code's tables: a code, frame type, flag
 * or message added on one side and not the other fails here.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  CAPABILITIES,
  CONTROL_MESSAGES,
  DEFAULT_SESSION_OPTIONS,
  ERROR_CODES,
  MAX_CAPABILITIES,
  MAX_STREAM_METADATA_BYTES,
  MAX_STREAM_METADATA_ENTRIES,
  MAX_UNSENT_REPLIES,
  Flag,
  FrameType,
  GoAwayCode,
  STREAM_HEADER_VERSIONS,
  STREAM_STATUS,
  STREAM_TYPES,
  encodeHeader,
  encodeStreamHeader,
  encodeStreamReply,
  type ErrorCode,
} from '@cluster-tunnel/protocol';
import { SERVER_CONFIG_SCHEMA } from '../../packages/server/src/config.js';

function readDoc(name: string): string {
  return readFileSync(new URL(`../../docs/${name}`, import.meta.url), 'utf8');
}

/** Splits a Markdown table line into trimmed cells; a `|` inside backticks stays in its cell. */
function cells(line: string): string[] {
  const out: string[] = [];
  let cell = '';
  let inCode = false;
  for (const ch of line.trim().replace(/^\|/, '').replace(/\|$/, '')) {
    if (ch === '`') inCode = !inCode;
    if (ch === '|' && !inCode) {
      out.push(cell.trim());
      cell = '';
    } else {
      cell += ch;
    }
  }
  out.push(cell.trim());
  return out;
}

/** Every row of every table in the page, header rows included, separator rows left out. */
function tableRows(markdown: string): string[][] {
  return markdown
    .split('\n')
    .filter((line) => line.trimStart().startsWith('|') && !/^\|[\s|:-]+\|$/.test(line.trim()))
    .map(cells);
}

const unquote = (cell: string): string => cell.replace(/^`(.*)`$/, '$1');

/** True when some table row has a cell naming `name` and a cell holding one of `values`. */
function hasRow(rows: string[][], name: string, values: string[]): boolean {
  return rows.some((row) => {
    const plain = row.map(unquote);
    return plain.includes(name) && plain.some((c) => values.includes(c));
  });
}

const hex = (buf: Buffer): string => buf.toString('hex').replace(/(..)(?!$)/g, '$1 ');

describe('docs/ERRORS.md', () => {
  const rows = tableRows(readDoc('ERRORS.md')).filter((row) => /^TUN_ERR_/.test(unquote(row[0] ?? '')));
  const documented = rows.map((row) => unquote(row[0]!));

  it('has exactly one row for every code in ERROR_CODES', () => {
    expect([...documented].sort()).toEqual(Object.keys(ERROR_CODES).sort());
    expect(new Set(documented).size).toBe(documented.length);
  });

  it('names no code that does not exist', () => {
    const unknown = documented.filter((code) => !Object.hasOwn(ERROR_CODES, code));
    expect(unknown).toEqual([]);
  });

  it('gives every code the retryable default of the table in errors.ts', () => {
    for (const row of rows) {
      const code = unquote(row[0]!);
      if (!Object.hasOwn(ERROR_CODES, code)) continue; // reported by the test above
      expect(row[1], code).toBe(ERROR_CODES[code as ErrorCode].retryable ? 'yes' : 'no');
    }
  });

  it('fills all five columns of every row', () => {
    for (const row of rows) {
      expect(row, row[0]).toHaveLength(5);
      expect(
        row.every((c) => c.length > 0),
        row[0],
      ).toBe(true);
    }
  });
});

describe('docs/PROTOCOL.md', () => {
  const doc = readDoc('PROTOCOL.md');
  const rows = tableRows(doc);

  it.each(Object.entries(FrameType))('lists frame type %s with its value %i', (name, value) => {
    expect(hasRow(rows, name, [String(value), `0x${value.toString(16)}`])).toBe(true);
  });

  it.each(Object.entries(Flag))('lists flag %s with its value %i', (name, value) => {
    const h = value.toString(16);
    expect(hasRow(rows, name, [String(value), `0x${h}`, `0x${h.padStart(4, '0')}`])).toBe(true);
  });

  it.each(Object.entries(GoAwayCode))('lists GoAway code %s with its value %i', (name, value) => {
    expect(hasRow(rows, name, [String(value)])).toBe(true);
  });

  it.each(Object.keys(CONTROL_MESSAGES))('describes the control message %s in a table row', (type) => {
    expect(rows.some((row) => unquote(row[0] ?? '') === type)).toBe(true);
  });

  it.each(Object.entries(STREAM_STATUS))('lists stream status %s with its value %i', (name, value) => {
    expect(hasRow(rows, name, [String(value)])).toBe(true);
  });

  it.each(Object.entries(STREAM_TYPES))('lists stream type %s with its value %i', (name, value) => {
    expect(hasRow(rows, name, [String(value)])).toBe(true);
  });

  it.each(Object.entries(STREAM_HEADER_VERSIONS))('lists stream header version %s with its value %i', (name, value) => {
    expect(hasRow(rows, name, [String(value)])).toBe(true);
  });

  it.each(Object.values(CAPABILITIES))('describes the capability %s in a table row', (name) => {
    expect(rows.some((row) => unquote(row[0] ?? '') === name)).toBe(true);
  });

  it('shows byte examples that are what the encoders produce', () => {
    const dataFrame = Buffer.concat([encodeHeader(FrameType.Data, 0, 1, 5), Buffer.from('hello')]);
    expect(doc).toContain(hex(dataFrame));
    expect(doc).toContain(hex(encodeHeader(FrameType.WindowUpdate, Flag.SYN, 1, 0)));
    expect(doc).toContain(hex(encodeHeader(FrameType.WindowUpdate, Flag.ACK, 2, 128 * 1024)));
    expect(doc).toContain(hex(encodeHeader(FrameType.Ping, Flag.SYN, 0, 1)));
    expect(doc).toContain(hex(encodeHeader(FrameType.GoAway, 0, 0, GoAwayCode.Normal)));
    const user = { type: 'route', route: 'cluster-u1', remoteAddress: '203.0.113.9:51234' } as const;
    expect(doc).toContain(hex(encodeStreamHeader(user, 1)));
    expect(doc).toContain(hex(encodeStreamHeader({ ...user, metadata: { sni: 'cluster-u1.example' } }, 2)));
    expect(doc).toContain(hex(encodeStreamReply({ ok: true })));
    const refused = encodeStreamReply({
      ok: false,
      code: 'TUN_ERR_UNKNOWN_ROUTE',
      message: 'no target for cluster-u1-grafana',
    });
    expect(doc).toContain(`${hex(refused.subarray(0, 3))} ${refused.subarray(3).toString('utf8')}`);
  });
});

describe('docs/SECURITY.md', () => {
  const doc = readDoc('SECURITY.md');
  const rows = tableRows(doc);
  const mentioned = (name: string): boolean => rows.some((row) => row.some((cell) => cell.includes(name)));

  // Every session option a peer's behaviour is measured against is a limit the page lists.
  const sessionLimits = Object.keys(DEFAULT_SESSION_OPTIONS).filter((k) => k !== 'closeTimeoutMs');
  it.each(sessionLimits)('lists the session option %s in a limits table', (option) => {
    expect(mentioned(option)).toBe(true);
  });

  const serverLimits = Object.keys(SERVER_CONFIG_SCHEMA).filter((k) => /^max|TimeoutMs$|Tolerance/.test(k));
  it.each(serverLimits.filter((k) => k !== 'drainTimeoutMs'))(
    'lists the server setting %s in a limits table',
    (key) => {
      expect(mentioned(key)).toBe(true);
    },
  );

  // The names a TUN_ERR_LIMIT_EXCEEDED carries in details.limit, wherever the code sets one.
  const sources = ['protocol/src/yamux/session.ts', 'protocol/src/websocket/duplex.ts', 'server/src/agent-endpoint.ts'];
  const limitNames = new Set(
    sources.flatMap((file) => {
      const text = readFileSync(new URL(`../../packages/${file}`, import.meta.url), 'utf8');
      return [...text.matchAll(/limit: '(\w+)'|limitExceeded\(\s*'(\w+)'|ReadLimit = ([^;]+);/g)].flatMap((m) =>
        (m[1] ?? m[2] ?? m[3] ?? '').match(/\w+/g) ?? [],
      );
    }),
  );
  it('finds the limit names in the code', () => {
    expect([...limitNames]).toEqual(expect.arrayContaining(['pingsPerSecond', 'maxAgentsPerCluster']));
  });
  it.each([...limitNames])('lists details.limit %s in a limits table', (name) => {
    expect(mentioned(name)).toBe(true);
  });
  it.each([
    ['MAX_STREAM_METADATA_ENTRIES', MAX_STREAM_METADATA_ENTRIES],
    ['MAX_STREAM_METADATA_BYTES', MAX_STREAM_METADATA_BYTES],
    ['MAX_CAPABILITIES', MAX_CAPABILITIES],
  ])('lists %s with its value', (name, value) => {
    expect(rows.some((r) => r.some((c) => c.includes(name)) && r.some((c) => c.includes(String(value))))).toBe(
      true,
    );
  });
  it('lists MAX_UNSENT_REPLIES with its value', () => {
    expect(mentioned('MAX_UNSENT_REPLIES')).toBe(true);
    expect(rows.some((r) => r.some((c) => c.includes(String(MAX_UNSENT_REPLIES))))).toBe(true);
  });
});
