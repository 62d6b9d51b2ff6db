/*
 * roost-jail-preload.so: LD_PRELOADed into a jailed QEMU (glibc). QEMU 7.2
 * opens a memory-backend-file image O_RDWR even with share=off (a private,
 * copy-on-write mapping); a jailed QEMU must not hold a writable fd to a
 * snapshot RAM image other sandboxes map. The jailer opens the image
 * read-only and names it in ROOST_JAIL_OPEN (`PATH=FD` lines, see
 * preload_map.h); every open of exactly PATH then returns a duplicate of FD,
 * whatever access mode was asked for. MAP_PRIVATE with PROT_WRITE on a
 * read-only fd is legal, so QEMU works; any write(2) to it fails with EBADF.
 *
 * Interposes open, open64, __open_2, __open64_2, openat, openat64,
 * __openat_2 and __openat64_2. The map is parsed once, by a constructor,
 * before QEMU starts any thread; a malformed ROOST_JAIL_OPEN ends the
 * process (status 127) rather than letting QEMU open the file read-write.
 */
#include "preload_map.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

static struct jail_open_entry map[JAIL_OPEN_MAX];
static size_t nmap;

__attribute__((constructor)) static void jail_preload_init(void)
{
	const char *env = getenv("ROOST_JAIL_OPEN");
	if (!env || !*env)
		return;
	char *copy = strdup(env);
	int n = copy ? jail_open_parse(copy, map, JAIL_OPEN_MAX) : -1;
	if (n < 0) {
		static const char msg[] = "roost-jail-preload: malformed ROOST_JAIL_OPEN\n";
		ssize_t w = write(2, msg, sizeof msg - 1);
		(void)w;
		_exit(127);
	}
	nmap = (size_t)n;
}

/* A duplicate of the mapped fd (-1 with errno on failure), or -2 when path is not mapped. */
static int mapped(int dirfd, const char *path, int flags)
{
	if (nmap == 0 || !path || (path[0] != '/' && dirfd != AT_FDCWD))
		return -2;
	int fd = jail_open_lookup(map, nmap, path);
	if (fd < 0)
		return -2;
	return fcntl(fd, (flags & O_CLOEXEC) ? F_DUPFD_CLOEXEC : F_DUPFD, 0);
}

static int needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

/* The next definition of name, looked up once (a benign race: every thread finds the same). */
#define REAL(type, name)                                                                           \
	static type real_##name;                                                                   \
	static type get_##name(void)                                                               \
	{                                                                                          \
		type f = __atomic_load_n(&real_##name, __ATOMIC_ACQUIRE);                          \
		if (!f) {                                                                          \
			f = (type)dlsym(RTLD_NEXT, #name);                                         \
			if (!f) {                                                                  \
				static const char msg[] = "roost-jail-preload: no " #name "\n";    \
				ssize_t w = write(2, msg, sizeof msg - 1);                         \
				(void)w;                                                           \
				abort();                                                           \
			}                                                                          \
			__atomic_store_n(&real_##name, f, __ATOMIC_RELEASE);                       \
		}                                                                                  \
		return f;                                                                          \
	}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);

REAL(open_fn, open)
REAL(open_fn, open64)
REAL(open2_fn, __open_2)
REAL(open2_fn, __open64_2)
REAL(openat_fn, openat)
REAL(openat_fn, openat64)
REAL(openat2_fn, __openat_2)
REAL(openat2_fn, __openat64_2)

#define MODE_ARG(flags, mode)                                                                      \
	do {                                                                                       \
		if (needs_mode(flags)) {                                                           \
			va_list ap;                                                                \
			va_start(ap, flags);                                                       \
			mode = va_arg(ap, mode_t);                                                 \
			va_end(ap);                                                                \
		}                                                                                  \
	} while (0)

int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	int fd = mapped(AT_FDCWD, path, flags);
	return fd != -2 ? fd : get_open()(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	int fd = mapped(AT_FDCWD, path, flags);
	return fd != -2 ? fd : get_open64()(path, flags, mode);
}

int __open_2(const char *path, int flags)
{
	int fd = mapped(AT_FDCWD, path, flags);
	return fd != -2 ? fd : get___open_2()(path, flags);
}

int __open64_2(const char *path, int flags)
{
	int fd = mapped(AT_FDCWD, path, flags);
	return fd != -2 ? fd : get___open64_2()(path, flags);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	int fd = mapped(dirfd, path, flags);
	return fd != -2 ? fd : get_openat()(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	MODE_ARG(flags, mode);
	int fd = mapped(dirfd, path, flags);
	return fd != -2 ? fd : get_openat64()(dirfd, path, flags, mode);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	int fd = mapped(dirfd, path, flags);
	return fd != -2 ? fd : get___openat_2()(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	int fd = mapped(dirfd, path, flags);
	return fd != -2 ? fd : get___openat64_2()(dirfd, path, flags);
}
