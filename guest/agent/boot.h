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
/* /dev/null, O_RDWR, for commands without stdin. */
extern int devnull_fd;

/* Ends every process, syncs and ends the VM (reboot, which QEMU takes as exit). */
void do_poweroff(const char *why);

#endif
