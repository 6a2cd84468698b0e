// A small Dockerfile reader (no Docker engine here): instructions with continuation lines joined
// and comment lines dropped, global ARG defaults substituted into FROM, stages split. Enough to
// check the image definition; heredocs and a non-default escape character are refused, not guessed.
// Plus the .dockerignore rule set, evaluated the way BuildKit does: last matching pattern wins, a
// pattern that matches a parent directory matches everything inside it.

export interface Instruction {
  /** Upper-case, e.g. COPY. */
  keyword: string;
  /** `--from=build` → { from: 'build' } (leading --flags only). */
  flags: Record<string, string>;
  /** The rest, flags removed, continuation lines joined with a space. */
  args: string;
  /** 1-based line of the instruction's first line. */
  line: number;
}

export interface Stage {
  /** FROM image after global ARG substitution. */
  image: string;
  /** `AS name`, lower-cased. */
  name: string | undefined;
  from: Instruction;
  instructions: Instruction[];
}

export interface Dockerfile {
  /** ARG defaults declared before the first FROM. */
  globalArgs: Record<string, string>;
  stages: Stage[];
}

function splitFlags(rest: string): { flags: Record<string, string>; args: string } {
  const flags: Record<string, string> = {};
  let args = rest;
  // Each flag takes at least three characters: at most rest.length / 3 of them.
  for (let n = 0; n <= rest.length; n++) {
    const m = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(args);
    if (m === null) return { flags, args };
    flags[m[1] as string] = m[2] ?? 'true';
    args = args.slice(m[0].length);
  }
  return { flags, args };
}

export function parseInstructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split(/\r?\n/);
  let pending: { text: string; line: number } | undefined;
  lines.forEach((raw, i) => {
    if (i === 0 && /^#\s*escape\s*=/.test(raw))
      throw new Error('a non-default escape character is not supported');
    const trimmed = raw.trim();
    // Comment lines are dropped, also inside a continued instruction (as Docker does).
    if (trimmed.startsWith('#')) return;
    if (trimmed === '' && pending === undefined) return;
    const continued = /\\\s*$/.test(raw);
    const piece = continued ? raw.replace(/\\\s*$/, '') : raw;
    pending =
      pending === undefined
        ? { text: piece.trim(), line: i + 1 }
        : { ...pending, text: `${pending.text} ${piece.trim()}` };
    if (continued) return;
    const m = /^(\S+)\s*(.*)$/s.exec(pending.text);
    if (m !== null) {
      if (/<<-?\s*["']?[A-Za-z]/.test(m[2] ?? ''))
        throw new Error(`line ${pending.line}: heredocs are not supported`);
      out.push({ keyword: (m[1] as string).toUpperCase(), ...splitFlags(m[2] ?? ''), line: pending.line });
    }
    pending = undefined;
  });
  if (pending !== undefined) throw new Error(`line ${pending.line}: the file ends inside a continued line`);
  return out;
}

function substitute(value: string, vars: Record<string, string>): string {
  return value.replace(
    /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (m, a, dflt, b) => {
      const name = (a ?? b) as string;
      return vars[name] ?? (dflt as string | undefined) ?? m;
    },
  );
}

export function parseDockerfile(text: string): Dockerfile {
  const globalArgs: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const ins of parseInstructions(text)) {
    if (ins.keyword === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?\s*$/i.exec(ins.args);
      if (m === null) throw new Error(`line ${ins.line}: cannot read FROM ${ins.args}`);
      stages.push({
        image: substitute(m[1] as string, globalArgs),
        name: m[2]?.toLowerCase(),
        from: ins,
        instructions: [],
      });
    } else if (stages.length === 0) {
      if (ins.keyword !== 'ARG') throw new Error(`line ${ins.line}: ${ins.keyword} before the first FROM`);
      const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$/.exec(ins.args.trim());
      if (m === null) throw new Error(`line ${ins.line}: cannot read ARG ${ins.args}`);
      globalArgs[m[1] as string] = (m[2] ?? '').replace(/^"(.*)"$/, '$1');
    } else {
      (stages[stages.length - 1] as Stage).instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

/** The words of a shell-form argument list, or the items of an exec-form JSON array. */
export function words(args: string): string[] {
  const trimmed = args.trim();
  if (trimmed.startsWith('[')) return JSON.parse(trimmed) as string[];
  return trimmed.split(/\s+/).filter(Boolean);
}

function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const ch = pattern[i] as string;
    if (ch === '*' && pattern[i + 1] === '*') {
      // `**/` matches any number of directories, including none; a bare `**` anything.
      if (pattern[i + 2] === '/') {
        re += '(?:.*/)?';
        i += 2;
      } else {
        re += '.*';
        i += 1;
      }
    } else if (ch === '*') re += '[^/]*';
    else if (ch === '?') re += '[^/]';
    else re += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/** `(path) => true` when the .dockerignore rules keep a context-relative path out of the build. */
export function dockerignoreMatcher(text: string): (path: string) => boolean {
  const rules = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const negated = l.startsWith('!');
      const pattern = (negated ? l.slice(1) : l).trim().replace(/^\/+/, '').replace(/\/+$/, '');
      return { negated, re: globToRegExp(pattern) };
    });
  return (path: string): boolean => {
    const parts = path.replace(/^\.\//, '').split('/');
    const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let excluded = false;
    for (const rule of rules) {
      if (candidates.some((c) => rule.re.test(c))) excluded = !rule.negated;
    }
    return excluded;
  };
}
