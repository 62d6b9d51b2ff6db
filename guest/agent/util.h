/*
 * Small helpers every part of the agent uses: the console log, the monotonic
 * clock, fds, small files, mounts, and the kernel command line. No state
 * beyond the console fd.
 */
#ifndef ROOST_UTIL_H
#define ROOST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* /dev/console once boot.c has opened it; -1 before (logmsg then uses fd 2). */
extern int console_fd;

/* One "roost-agent: ..." line on the console. */
__attribute__((format(printf, 1, 2))) void logmsg(const char *fmt, ...);

/* CLOCK_MONOTONIC in ms. */
uint64_t now_ms(void);
void sleep_ms(unsigned ms);
void set_nonblock(int fd);
/* Closes *fd if open and sets it to -1. */
void close_fd(int *fd);

/* Reads until `cap` bytes, end of file or an error; returns the bytes read. */
size_t read_full(int fd, char *buf, size_t cap);
/* Reads a small file into buf (NUL-terminated). Returns the length or -1. */
ssize_t read_small(const char *path, char *buf, size_t size);
/* mkdir -p; 0 or -1 with errno. */
int mkdir_p(const char *path, mode_t mode);
/* mount(2) with the mount point created first; failures are logged. 0 or -1
 * with errno (EBUSY counts as success with quiet_busy). */
int do_mount(const char *src, const char *target, const char *type, unsigned long flags,
	     const char *data, bool quiet_busy);

/* Looks for the virtio-serial port named `name` (/sys/class/virtio-ports); true
 * with its /dev path in dev. */
bool find_virtio_port(const char *name, char *dev, size_t devlen);

/* Finds key=value in a kernel command line (a value may be "quoted"); the
 * value is copied into val. False if absent, empty or longer than vallen - 1. */
bool cmdline_get(const char *cmdline, const char *key, char *val, size_t vallen);

#endif
