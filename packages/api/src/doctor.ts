import { z } from 'zod';

/*
 * `roost doctor` / `runtime.doctor()`: a check of a Roost home against what
 * runs on the host, and the repair of what can be repaired safely. The
 * database is not the only witness of a home: each sandbox and snapshot
 * directory keeps a copy of its record, and live VM processes name their
 * directories, so records can be rebuilt from them (see docs/recovery.md).
 */

/** What a finding is about. */
export const DoctorFindingKindSchema = z.enum([
  /** The database is missing, empty, not a database, not Roost's, or from a newer Roost. */
  'database',
  /** A VM process of this home that no record names. */
  'vm-without-record',
  /** A record whose status or pid disagrees with the VM processes found. */
  'status-mismatch',
  /** A sandbox directory without a record. */
  'dir-without-record',
  /** A record whose sandbox directory is gone. */
  'record-without-dir',
  /** A snapshot directory without a record. */
  'snapshot-without-record',
  /** A snapshot record whose directory is gone. */
  'snapshot-without-files',
  /** A volume directory without a record. */
  'volume-without-record',
  /** Image blobs that no image in the index uses (after the index was lost). */
  'images-not-indexed',
  /** Temporary files left by processes that died. */
  'temp-files',
  /** Files or directories of the home that other users could read (not 0600/0700). */
  'permissions',
]);
export type DoctorFindingKind = z.infer<typeof DoctorFindingKindSchema>;

/** One thing `doctor` found: what, where, and whether it was repaired. */
export const DoctorFindingSchema = z
  .object({
    kind: DoctorFindingKindSchema,
    /** The sandbox, snapshot or volume it is about. */
    id: z.string().optional(),
    /** The file or directory it is about. */
    path: z.string().optional(),
    /** What was found, and what was done or what to do. */
    message: z.string(),
    /** True when this run repaired it (only with `repair`). */
    repaired: z.boolean(),
  })
  .meta({ id: 'DoctorFinding' });
export type DoctorFinding = z.infer<typeof DoctorFindingSchema>;

/** The state of a home's database, as `doctor` found it. */
export const DatabaseConditionSchema = z.enum(['ok', 'missing', 'empty', 'not-a-database', 'foreign', 'newer']);
export type DatabaseCondition = z.infer<typeof DatabaseConditionSchema>;

/** What `doctor` found in a home and what it repaired. */
export const DoctorReportSchema = z
  .object({
    home: z.string(),
    /** Whether repairs were made (`--repair`), or only checks. */
    repair: z.boolean(),
    database: z.object({
      condition: DatabaseConditionSchema,
      /** Where a refused database was moved (it is never deleted). */
      movedTo: z.string().optional(),
    }),
    /** VM processes of this home found running. */
    vms: z.number().int(),
    findings: z.array(DoctorFindingSchema),
    /** True when nothing is left to repair: no findings, or every one repaired. */
    ok: z.boolean(),
  })
  .meta({ id: 'DoctorReport' });
export type DoctorReport = z.infer<typeof DoctorReportSchema>;

/** POST /v1/doctor, and the options of `runtime.doctor()`. */
export const DoctorRequestSchema = z
  .object({
    /** Repair what can be repaired safely (default: only check). */
    repair: z.boolean().optional(),
  })
  .strict()
  .meta({ id: 'DoctorRequest' });
export type DoctorRequest = z.infer<typeof DoctorRequestSchema>;
export type DoctorOptions = DoctorRequest;
