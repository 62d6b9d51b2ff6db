import { ftruncateSync, writeSync } from 'node:fs';

/*
 * Writing a file that came from a sandbox so that its holes stay holes. A
 * guest can make a file of any apparent size that costs it nothing (`truncate
 * -s 1T`); written out byte by byte, the host would pay for every zero. Here
 * runs of zero blocks are skipped (the file offset moves on, nothing is
 * written) and the size is set at the end with ftruncate, so they become
 * holes on the host too. The file must be new (empty): what is skipped reads
 * back as zeros only because nothing was there.
 */

/** The unit zeros are detected in: a file system block on most hosts. */
export const SPARSE_BLOCK = 4096;
const ZEROS = Buffer.alloc(SPARSE_BLOCK);

/**
 * The data runs of `chunk`, which starts at file offset `position`: the
 * pieces to write, as [start, end) offsets into `chunk`, with every
 * block-aligned run of zeros left out. Blocks are aligned to the file
 * (not the chunk), so a zero block split between two chunks is still found.
 */
export function dataRuns(chunk: Uint8Array, position: number): [number, number][] {
  const runs: [number, number][] = [];
  const b = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  let runStart = -1;
  let off = 0;
  while (off < b.length) {
    const blockEnd = Math.min(b.length, off + (SPARSE_BLOCK - ((position + off) % SPARSE_BLOCK)));
    const zero = b.subarray(off, blockEnd).equals(ZEROS.subarray(0, blockEnd - off));
    if (zero && runStart >= 0) {
      runs.push([runStart, off]);
      runStart = -1;
    } else if (!zero && runStart < 0) {
      runStart = off;
    }
    off = blockEnd;
  }
  if (runStart >= 0) runs.push([runStart, b.length]);
  return runs;
}

/** A new, empty file written in order, zero blocks left as holes. */
export class SparseWriter {
  #position = 0;
  /** Bytes written to disk (the data, not the holes). */
  written = 0;

  constructor(private readonly fd: number) {}

  /** The file's size so far (data and holes). */
  get size(): number {
    return this.#position;
  }

  /** Appends `chunk`: its data runs are written at their offsets, its zero blocks skipped. */
  write(chunk: Uint8Array): void {
    for (const [start, end] of dataRuns(chunk, this.#position)) {
      for (let off = start; off < end;) {
        off += writeSync(this.fd, chunk, off, end - off, this.#position + off);
      }
      this.written += end - start;
    }
    this.#position += chunk.byteLength;
  }

  /** Sets the file's size: a trailing run of zeros becomes a hole at the end. */
  finish(): void {
    ftruncateSync(this.fd, this.#position);
  }
}
