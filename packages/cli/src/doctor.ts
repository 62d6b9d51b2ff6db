import type { Command } from 'commander';
import type { DoctorOptions, DoctorReport } from '@roost/api';

/** Runs the doctor: the daemon's when one owns the home, else the offline one (which works on a refused database). */
export type Doctor = (options: DoctorOptions) => Promise<DoctorReport>;

/**
 * `roost doctor [--repair] [--json]`: checks the home against the VM
 * processes and directories found, and with `--repair` rebuilds what it
 * safely can. Exits 1 when something is left unrepaired.
 */
export function addDoctorCommand(program: Command, doctor: Doctor, setExit: (code: number) => void): void {
  program
    .command('doctor')
    .description('check the Roost home (records, VM processes, directories, database) and with --repair rebuild what can be rebuilt')
    .option('--repair', 'repair what can be repaired safely: move a broken database aside (kept), rebuild records, re-adopt running VMs')
    .option('--json', 'print the report as JSON')
    .action(async (flags: { repair?: boolean; json?: boolean }) => {
      const report = await doctor({ repair: !!flags.repair });
      process.stdout.write(flags.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
      if (!report.ok) setExit(1);
    });
}

/** The report as a person reads it: one line per finding, then what is left. */
export function formatReport(report: DoctorReport): string {
  const lines = [`home ${report.home}: database ${report.database.condition}, ${report.vms} VM process${report.vms === 1 ? '' : 'es'} found`];
  if (report.database.movedTo) lines.push(`the refused database was moved to ${report.database.movedTo}`);
  for (const f of report.findings) lines.push(`${f.repaired ? 'repaired' : report.repair ? 'left    ' : 'found   '}  ${f.kind}: ${f.message}`);
  const left = report.findings.filter((f) => !f.repaired).length;
  if (report.findings.length === 0) lines.push('nothing to repair');
  else if (left === 0) lines.push(`${report.findings.length} problem${report.findings.length > 1 ? 's' : ''} repaired`);
  else if (!report.repair) lines.push(`${left} problem${left > 1 ? 's' : ''} found: \`roost doctor --repair\` repairs what it can`);
  else lines.push(`${left} problem${left > 1 ? 's' : ''} left to you (see above)`);
  return lines.join('\n') + '\n';
}
