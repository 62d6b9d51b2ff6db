/*
 * Labels Roost sets on sandboxes itself. A create may not give them: a
 * sandbox carrying one would be taken for a pool member or a replica.
 */

/** The label every member of a warm pool carries (`roost.pool=<name>`). */
export const POOL_LABEL = 'roost.pool';
/** The label every replica of a deployment carries (`roost.deployment=<name>`). */
export const DEPLOYMENT_LABEL = 'roost.deployment';
/** The label naming the revision of the deployment spec a replica was made from (a digest of what makes a replica). */
export const DEPLOYMENT_REVISION_LABEL = 'roost.deployment.revision';

/** The labels above: Roost's own, which a create may not give. */
export const RESERVED_LABELS: readonly string[] = [POOL_LABEL, DEPLOYMENT_LABEL, DEPLOYMENT_REVISION_LABEL];

/** `labels` without Roost's own (what a fork of a pool member or a replica carries over). */
export function userLabels(labels: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(labels).filter(([k]) => !RESERVED_LABELS.includes(k)));
}
