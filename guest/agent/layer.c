/*
 * layer.c: the `commit` call (docs/PROTOCOL.md, "Calls"): seals the command
 * root's upper layer as a numbered read-only layer and starts a fresh one,
 * so that an image builder reads each step's changes alone (`archive` with
 * LAYER). Runs in the forked child of a CALL, as root, not chrooted.
 *
 * The command root is an overlay: lowerdir=ROOT_LOWER (the image),
 * upperdir=ROOT_UPPER. A commit
 *  1. ends every process whose root is CMD_ROOT (they could write into the
 *     layer being sealed), waiting up to 5 s for them to go;
 *  2. syncs, and detaches CMD_ROOT with everything mounted below it;
 *  3. moves ROOT_UPPER to ROOT_LAYERS/<n> (n = 1, 2, ...) and its workdir
 *     aside (ROOT_LAYERS/.work-<n>), and makes both anew, empty;
 *  4. mounts the overlay again with lowerdir=<n>:<n-1>:...:1:ROOT_LOWER (the
 *     sealed layers keep overlayfs' whiteouts and opaque markers, which the
 *     kernel honours in lower layers, as Docker's overlay2 does), and the
 *     root's proc, sys and /dev.
 * fd 1 gets the layer's number as decimal text. A failure after step 2
 * leaves the root unmounted (commands then fail): the builder's sandbox is
 * removed on any failure.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "fileops.h"

#define ROOT_LAYERS ROOT_RW "/layers"
/* Layers one root may stack: the overlay's mount options must fit a page. */
#define MAX_LAYERS  120

/* Sends SIGKILL to every process whose root is CMD_ROOT; returns how many
 * there were (0: none left). */
static int kill_root_processes(void)
{
	DIR *d = opendir("/proc");
	if (d == NULL)
		return -1;
	int found = 0;
	pid_t self = getpid();
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		if (*end != '\0' || pid <= 1 || pid == self)
			continue;
		char link[64], target[sizeof CMD_ROOT + 2];
		snprintf(link, sizeof link, "/proc/%ld/root", pid);
		ssize_t n = readlink(link, target, sizeof target - 1);
		if (n < 0)
			continue;
		target[n] = '\0';
		if (strcmp(target, CMD_ROOT) != 0)
			continue;
		found++;
		kill((pid_t)pid, SIGKILL);
	}
	closedir(d);
	return found;
}

/* The number of the next layer: one more than the highest sealed one. */
static int next_layer(void)
{
	DIR *d = opendir(ROOT_LAYERS);
	if (d == NULL)
		return errno == ENOENT ? 1 : -1;
	long top = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char *end;
		long n = strtol(de->d_name, &end, 10);
		if (*end == '\0' && n > top)
			top = n;
	}
	closedir(d);
	return (int)top + 1;
}

int layer_path(const char *operand, char *out, size_t size, struct fop_err *err)
{
	char *end;
	errno = 0;
	long n = strtol(operand, &end, 10);
	if (errno != 0 || *end != '\0' || end == operand || n < 1 || n > MAX_LAYERS)
		return fop_fail(err, EINVAL, operand, "a layer is a number from 1 to 120");
	snprintf(out, size, "%s/%ld/.", ROOT_LAYERS, n);
	struct stat st;
	if (stat(out, &st) < 0)
		return fop_fail(err, errno, operand, "layer");
	return 0;
}

int layer_commit(int out_fd, void (*remount)(void), struct fop_err *err)
{
	if (remount == NULL)
		return fop_fail(err, ENOENT, CMD_ROOT, "commit: no command root");
	for (int i = 0; i < 500 && kill_root_processes() > 0; i++)
		nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
	if (kill_root_processes() > 0)
		return fop_fail(err, EBUSY, CMD_ROOT, "commit: processes of the root do not end");
	int n = next_layer();
	if (n < 0)
		return fop_fail(err, errno, ROOT_LAYERS, "commit: reading the layers");
	if (n > MAX_LAYERS)
		return fop_fail(err, E2BIG, ROOT_LAYERS, "commit: the root has 120 layers already");
	if (mkdir(ROOT_LAYERS, 0700) < 0 && errno != EEXIST)
		return fop_fail(err, errno, ROOT_LAYERS, "commit: mkdir");
	sync();
	if (umount2(CMD_ROOT, MNT_DETACH) < 0)
		return fop_fail(err, errno, CMD_ROOT, "commit: unmount the root");

	char sealed[64], work[64];
	snprintf(sealed, sizeof sealed, "%s/%d", ROOT_LAYERS, n);
	snprintf(work, sizeof work, "%s/.work-%d", ROOT_LAYERS, n);
	if (rename(ROOT_UPPER, sealed) < 0)
		return fop_fail(err, errno, sealed, "commit: seal the upper layer");
	if (rename(ROOT_WORK, work) < 0)
		return fop_fail(err, errno, work, "commit: move the workdir aside");
	if (mkdir(ROOT_UPPER, 0755) < 0 || mkdir(ROOT_WORK, 0755) < 0)
		return fop_fail(err, errno, ROOT_UPPER, "commit: mkdir");

	/* lowerdir: newest first, the image last. */
	char opts[4096];
	size_t o = (size_t)snprintf(opts, sizeof opts, "lowerdir=");
	for (int i = n; i >= 1; i--) {
		int k = snprintf(opts + o, sizeof opts - o, "%s/%d:", ROOT_LAYERS, i);
		if (k < 0 || (size_t)k >= sizeof opts - o)
			return fop_fail(err, E2BIG, ROOT_LAYERS, "commit: too many layers");
		o += (size_t)k;
	}
	int k = snprintf(opts + o, sizeof opts - o, "%s,upperdir=%s,workdir=%s", ROOT_LOWER,
			 ROOT_UPPER, ROOT_WORK);
	if (k < 0 || (size_t)k >= sizeof opts - o)
		return fop_fail(err, E2BIG, ROOT_LAYERS, "commit: too many layers");
	if (mount("overlay", CMD_ROOT, "overlay", 0, opts) < 0)
		return fop_fail(err, errno, CMD_ROOT, "commit: mount the overlay");
	remount();

	char num[16];
	int len = snprintf(num, sizeof num, "%d", n);
	if (write(out_fd, num, (size_t)len) != len)
		return fop_fail(err, errno, CMD_ROOT, "commit: write the layer number");
	return 0;
}
