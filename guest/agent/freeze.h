/*
 * Snapshots (docs/PROTOCOL.md "Snapshots"): FREEZE and THAW of the sandbox's
 * disk, and recognising a copy restored from a snapshot.
 */
#ifndef ROOST_FREEZE_H
#define ROOST_FREEZE_H

#include <stdbool.h>

/* FREEZE: sync and freeze the disk; answers on stream 0. */
void handle_freeze(void);
/* THAW: the snapshot is done (or abandoned); answers on stream 0. */
void handle_thaw(void);
/* Called on a disconnect or a HELLO: true if a snapshot was pending, i.e.
 * this is a restored copy meeting its first host (the disk is thawed). */
bool snapshot_restored(void);
/* Thaws the disk if the agent froze it: 0 or an errno. */
int fs_thaw(void);

#endif
