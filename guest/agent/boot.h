/*
 * PID 1's own state: the command root it built at boot, /dev/null for
 * commands without stdin, and powering the VM off. main() is in boot.c.
 */
#ifndef ROOST_BOOT_H
#define ROOST_BOOT_H

#include <stdbool.h>

/* The kernel command line named a root (roost.root) / it was mounted at
 * CMD_ROOT. When requested but not ok, root_err says why. */
extern bool root_requested, root_ok;
extern char root_err[1024];
/* The root's upper layer is on the sandbox's disk (else on a tmpfs). */
extern bool root_on_disk;
/* Mounts what a command root has below CMD_ROOT (proc, sys, the agent's /dev,
 * and without a disk a tmpfs /tmp and /run); again after a layer commit. */
void root_mount_extras(void);
/* /dev/null, O_RDWR, for commands without stdin. */
extern int devnull_fd;

/* Ends every process, syncs and ends the VM (reboot, which QEMU takes as exit). */
void do_poweroff(const char *why);

#endif
