/* Snapshots: see freeze.h. */
#include "freeze.h"

#include "agent.h"
#include "boot.h"
#include "port.h"
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* <linux/fs.h>: FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int). */
#define ROOST_FIFREEZE _IOWR('X', 119, int)
#define ROOST_FITHAW   _IOWR('X', 120, int)

/* snapshot_pending: a FREEZE was answered and no THAW came yet, so the
 * guest's memory may be in a snapshot; a host disconnect or a HELLO seen in
 * this state means this is a restored copy. fs_frozen: ROOT_RW is frozen
 * (FIFREEZE) by the agent. */
static bool snapshot_pending;
static bool fs_frozen;

/* ------------------------------------------------------------------ */
/* snapshots: FREEZE, THAW, and a restored copy */

/* Freezes the sandbox's writable filesystem (the disk at ROOT_RW). Returns 0
 * or an errno: EOPNOTSUPP when there is no disk to freeze (ROOT_RW is a
 * tmpfs, or there is no command root). Already frozen: 0. */
static int fs_freeze(void)
{
	if (fs_frozen)
		return 0;
	sync();
	if (!root_ok)
		return EOPNOTSUPP;
	int fd = open(ROOT_RW, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = ioctl(fd, ROOST_FIFREEZE, 0) < 0 ? errno : 0;
	close(fd);
	if (err == 0)
		fs_frozen = true;
	return err;
}

/* Thaws what fs_freeze froze. Returns 0 or an errno (then it stays frozen
 * and a later THAW may try again). EINVAL from FITHAW means it was not
 * frozen (someone in the guest thawed it): that is success. */
int fs_thaw(void)
{
	if (!fs_frozen)
		return 0;
	int fd = open(ROOT_RW, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = ioctl(fd, ROOST_FITHAW, 0) < 0 ? errno : 0;
	close(fd);
	if (err == EINVAL)
		err = 0;
	if (err == 0)
		fs_frozen = false;
	return err;
}

/* Answers FREEZE or THAW: {ERRNO}, and MESSAGE when it failed. */
static void send_fs_answer(uint8_t type, int err)
{
	struct roost_buf b;
	roost_buf_init(&b, scratch, sizeof scratch);
	size_t s = roost_frame_begin(&b, 0, type);
	roost_tlv_put_u32(&b, ROOST_TAG_ERRNO, (uint32_t)err);
	if (err) {
		char msg[256];
		if (type == ROOST_T_FREEZE && err == EOPNOTSUPP)
			snprintf(msg, sizeof msg, "nothing to freeze: the sandbox has no disk");
		else
			snprintf(msg, sizeof msg, "%s %s: %s",
				 type == ROOST_T_FREEZE ? "FIFREEZE" : "FITHAW", ROOT_RW,
				 strerror(err));
		roost_tlv_put_str(&b, ROOST_TAG_MESSAGE, msg);
	}
	send_buf(&b, s);
}

/* FREEZE: sync, freeze the disk, and remember that a snapshot may be taken
 * (also without a disk to freeze). Writers to the disk block until THAW. */
void handle_freeze(void)
{
	int err = fs_freeze();
	if (err == 0 || err == EOPNOTSUPP)
		snapshot_pending = true;
	else
		logmsg("FIFREEZE %s: %s", ROOT_RW, strerror(err));
	send_fs_answer(ROOST_T_FREEZE, err);
}

/* THAW: the snapshot is done (or abandoned); this is the source VM. */
void handle_thaw(void)
{
	int err = fs_thaw();
	if (err)
		logmsg("FITHAW %s: %s", ROOT_RW, strerror(err));
	snapshot_pending = false;
	send_fs_answer(ROOST_T_THAW, err);
}

/* A disconnect or a HELLO while a snapshot was pending: this is a copy
 * restored from the snapshot meeting its first host (the source gets THAW on
 * its own connection instead). Thaws the disk; returns true if the ending
 * session's commands are to be kept (as orphans) and the VM is not to be
 * powered off for it: that session belonged to the source's host. */
bool snapshot_restored(void)
{
	if (!snapshot_pending)
		return false;
	int err = fs_thaw();
	if (err)
		logmsg("restored copy: FITHAW %s: %s", ROOT_RW, strerror(err));
	snapshot_pending = false;
	return true;
}
