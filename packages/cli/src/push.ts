import type { Command } from 'commander';
import { pushProgressDone, type PushProgress, type PushResult } from '@roost/api';
import type { WithImages } from './connect.js';
import { bytes } from './format.js';
import { blobProgressPrinter, progressBar } from './images.js';

/**
 * `roost push NAME[:TAG] [REGISTRY/REPO[:TAG]]`: `images.push` through the
 * daemon when there is one (with its home's logins), else the home's store.
 */
export function addPushCommand(program: Command, withImages: WithImages): void {
  program
    .command('push')
    .description('push a stored image to a registry (blobs the registry has are skipped or mounted; the digest stays the same)')
    .argument('<image>', 'a stored image: NAME[:TAG], a digest or an id')
    .argument('[destination]', 'REGISTRY/REPOSITORY[:TAG] (default: the image\'s own name; tag "latest" when none)')
    .option('-q, --quiet', 'print only the pushed manifest digest')
    .action(async (image: string, destination: string | undefined, flags: { quiet?: boolean }) => {
      const result = await withImages((face) =>
        face.images.push(image, { ...(destination !== undefined ? { destination } : {}), ...(flags.quiet ? {} : { onProgress: pushProgressPrinter() }) }),
      );
      process.stdout.write(flags.quiet ? `${result.manifestDigest}\n` : pushSummary(result));
    });
}

/** `DEST: digest sha256:... (2 pushed, 1 mounted, 0 existed; 3.1MB uploaded)` */
export function pushSummary(r: PushResult): string {
  const { pushed, mounted, exists } = r.blobs;
  return `${r.destination}: digest ${r.manifestDigest} (${pushed} pushed, ${mounted} mounted, ${exists} already there; ${bytes(r.bytes.pushed)} uploaded)\n`;
}

/** Prints push progress on stderr (see blobProgressPrinter). */
export function pushProgressPrinter(stream: NodeJS.WriteStream = process.stderr): (p: PushProgress) => void {
  return blobProgressPrinter<PushProgress>(describePush, pushProgressDone, stream);
}

/** One blob's state in words (and a bar while it uploads). */
export function describePush(p: PushProgress): string {
  switch (p.status) {
    case 'waiting':
      return 'waiting';
    case 'checking':
      return 'checking';
    case 'exists':
      return 'already exists';
    case 'mounted':
      return `mounted from another repository (${bytes(p.total)})`;
    case 'pushed':
      return `pushed (${bytes(p.total)})`;
    case 'retrying':
      return 'retrying';
    case 'failed':
      return 'failed';
    case 'uploading':
      return `uploading ${progressBar(p.current, p.total)}`;
  }
}
