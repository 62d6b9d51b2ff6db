/* Small helpers: see util.h. */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int console_fd = -1;

__attribute__((format(printf, 1, 2))) void logmsg(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf, "roost-agent: ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t l = strlen(buf);
	buf[l++] = '\n';
	int fd = console_fd >= 0 ? console_fd : 2;
	while (write(fd, buf, l) < 0 && errno == EINTR)
		;
}

uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* Reads until `cap` bytes, end of file or an error; returns the bytes read. */
size_t read_full(int fd, char *buf, size_t cap)
{
	size_t have = 0;
	while (have < cap) {
		ssize_t n = read(fd, buf + have, cap - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	return have;
}

/* Reads a small file into buf (NUL-terminated). Returns the length or -1. */
ssize_t read_small(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t have = read_full(fd, buf, size - 1);
	close(fd);
	buf[have] = 0;
	return (ssize_t)have;
}

int mkdir_p(const char *path, mode_t mode)
{
	char tmp[PATH_MAX];
	size_t l = strlen(path);
	if (l == 0 || l >= sizeof tmp)
		return -1;
	memcpy(tmp, path, l + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, mode) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(tmp, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

/* mount(2) with the mount point created first; failures are logged.
 * Returns 0 on success (EBUSY on an already mounted target counts as success
 * for the boot mounts, where the kernel may have done it already). */
int do_mount(const char *src, const char *target, const char *type, unsigned long flags,
	     const char *data, bool quiet_busy)
{
	if (mkdir_p(target, 0755) < 0)
		logmsg("mkdir %s: %s", target, strerror(errno));
	if (mount(src, target, type, flags, data) == 0)
		return 0;
	int e = errno;
	if (quiet_busy && e == EBUSY)
		return 0;
	logmsg("mount %s on %s (%s): %s", src, target, type ? type : "bind", strerror(e));
	errno = e;
	return -1;
}

/* The /dev node of the virtio-serial port named `name` (sysfs). */
bool find_virtio_port(const char *name, char *dev, size_t devlen)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return false;
	bool found = false;
	struct dirent *de;
	while (!found && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[PATH_MAX], got[256];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", de->d_name);
		ssize_t l = read_small(path, got, sizeof got);
		if (l <= 0)
			continue;
		while (l > 0 && (got[l - 1] == '\n' || got[l - 1] == ' '))
			got[--l] = 0;
		if (strcmp(got, name) == 0) {
			snprintf(dev, devlen, "/dev/%s", de->d_name);
			found = true;
		}
	}
	closedir(d);
	return found;
}

/* Finds key=value in the kernel command line; value copied into val. */
bool cmdline_get(const char *cmdline, const char *key, char *val, size_t vallen)
{
	size_t kl = strlen(key);
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		const char *w = p;
		bool quoted = false;
		while (*p && (quoted || (*p != ' ' && *p != '\t' && *p != '\n'))) {
			if (*p == '"')
				quoted = !quoted;
			p++;
		}
		size_t wl = (size_t)(p - w);
		if (wl > kl && strncmp(w, key, kl) == 0 && w[kl] == '=') {
			const char *v = w + kl + 1;
			size_t vl = wl - kl - 1;
			if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
				v++;
				vl -= 2;
			}
			if (vl == 0 || vl >= vallen)
				return false;
			memcpy(val, v, vl);
			val[vl] = 0;
			return true;
		}
	}
	return false;
}
