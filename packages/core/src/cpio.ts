/** One entry of a newc ("070701") cpio archive, the format the kernel unpacks as initramfs. */
export interface CpioEntry {
  name: string;
  type: 'file' | 'dir' | 'char';
  mode: number;
  data?: Uint8Array;
  rdevMajor?: number;
  rdevMinor?: number;
}

const TYPE_BITS = { file: 0o100000, dir: 0o040000, char: 0o020000 } as const;

/**
 * Writes a newc archive. Written by hand because it is 30 lines and lets the
 * initramfs hold a device node without root privileges or a cpio binary.
 * Every entry is owned by root with mtime 0, so the output is reproducible.
 */
export function writeNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const add = (name: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0) => {
    const nameBytes = Buffer.from(name + '\0');
    const fields = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
    const header = '070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join('');
    parts.push(Buffer.from(header, 'ascii'), nameBytes, pad(110 + nameBytes.length));
    parts.push(Buffer.from(data), pad(data.length));
  };
  for (const e of entries) add(e.name, TYPE_BITS[e.type] | e.mode, e.data ?? new Uint8Array(0), e.rdevMajor, e.rdevMinor);
  add('TRAILER!!!', 0, new Uint8Array(0));
  return Buffer.concat(parts);
}

function pad(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}
