import { describe, expect, it } from 'vitest';
import { CreateVolumeRequestSchema } from './files.js';
import { looksLikeId, nameSchema } from './names.js';
import { CreateSnapshotRequestSchema, CreateTemplateRequestSchema } from './snapshots.js';

describe('names may not look like ids', () => {
  const idLike = ['0123456789ab', 'deadbeefcafe', 'a'.repeat(64)];
  const fine = ['web', 'deadbeefcafe1', 'deadbeefcaf', 'DEADBEEFCAFE', '0123456789ag', 'a'.repeat(63), 'snap-0123456789ab'];

  it('looksLikeId: 12 or 64 lowercase hex digits', () => {
    for (const n of idLike) expect(looksLikeId(n)).toBe(true);
    for (const n of fine) expect(looksLikeId(n)).toBe(false);
  });

  it('refuses id-like names of snapshots, templates and volumes, saying why', () => {
    for (const n of idLike) {
      for (const r of [
        CreateSnapshotRequestSchema.safeParse({ name: n }),
        CreateTemplateRequestSchema.safeParse({ name: n }),
        CreateVolumeRequestSchema.safeParse({ name: n }),
      ]) {
        expect(r.success).toBe(false);
        expect(r.error?.issues[0]?.message).toMatch(/may not look like ids/);
      }
    }
    for (const n of fine) {
      expect(CreateSnapshotRequestSchema.safeParse({ name: n }).success).toBe(true);
      expect(CreateVolumeRequestSchema.safeParse({ name: n }).success).toBe(true);
    }
  });

  it('still refuses malformed names with the shape message', () => {
    expect(nameSchema('volume').safeParse('-x').error?.issues[0]?.message).toMatch(/1-128 characters/);
  });
});
