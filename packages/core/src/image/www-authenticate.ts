/**
 * The `WWW-Authenticate` header (RFC 7235) read into challenges: pure
 * parsing, no I/O. Which challenge Roost answers is decided in registry-auth.ts.
 */
/** One challenge of a `WWW-Authenticate` header. */
export interface AuthChallenge {
  /** The scheme, lowercased (`basic`, `bearer`). */
  scheme: string;
  /** Parameters by lowercased name, values unquoted. */
  params: Record<string, string>;
  /** A token68 credential in place of parameters (rare in challenges). */
  token68?: string;
}

const TCHAR_RE = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_RE = /[A-Za-z0-9\-._~+/]+=*[ \t]*(?=,|$)/y;

/**
 * Parses a `WWW-Authenticate` header value (RFC 7235: one or more
 * challenges, each a scheme then a token68 or comma-separated
 * `name=token` / `name="quoted \"string\""` parameters). Several headers
 * joined by ", " parse as one. Malformed input ends parsing: what was read
 * before it is returned, as browsers and Docker do.
 */
export function parseWwwAuthenticate(header: string): AuthChallenge[] {
  const out: AuthChallenge[] = [];
  const n = header.length;
  let i = 0;
  const skipSpace = () => {
    while (i < n && (header[i] === ' ' || header[i] === '\t')) i++;
  };
  const token = () => {
    const start = i;
    while (i < n && TCHAR_RE.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  const quoted = (): string | undefined => {
    let value = '';
    for (i++; i < n;) {
      const c = header[i++]!;
      if (c === '"') return value;
      if (c === '\\') {
        if (i >= n) return undefined;
        value += header[i++]!;
      } else value += c;
    }
    return undefined;
  };

  challenges: while (i < n) {
    skipSpace();
    if (header[i] === ',') {
      i++;
      continue;
    }
    const scheme = token();
    if (!scheme) break;
    const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: Object.create(null) as Record<string, string> };
    out.push(challenge);
    skipSpace();
    TOKEN68_RE.lastIndex = i;
    const t68 = TOKEN68_RE.exec(header);
    if (t68) {
      challenge.token68 = t68[0].trim();
      i += t68[0].length;
      continue;
    }
    while (i < n) {
      skipSpace();
      if (header[i] === ',') {
        i++;
        continue;
      }
      const start = i;
      const name = token();
      if (!name) break challenges;
      skipSpace();
      if (header[i] !== '=') {
        // A token not followed by "=" is the scheme of the next challenge.
        i = start;
        continue challenges;
      }
      i++;
      skipSpace();
      const value = header[i] === '"' ? quoted() : token() || undefined;
      if (value === undefined) break challenges;
      challenge.params[name.toLowerCase()] = value;
      skipSpace();
      if (i < n && header[i] !== ',') break challenges;
    }
  }
  return out;
}
