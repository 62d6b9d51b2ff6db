/*
 * roost-jailer's command line: parsed and validated here, without any side
 * effect, so it is unit-tested without root (test/opts_test.c).
 *
 * The parser keeps pointers into argv and splits LINK=TARGET in place (argv
 * strings are writable), so it allocates nothing.
 */
#ifndef ROOST_JAILER_OPTS_H
#define ROOST_JAILER_OPTS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define JAIL_MAX_MOUNTS   256
#define JAIL_MAX_SYMLINKS 32
#define JAIL_MAX_FDS      59 /* 5 <= N < 64 */
#define JAIL_MAX_CGROUPS  16
#define JAIL_MAX_GROUPS   64
#define JAIL_MAX_ENV      256
#define JAIL_FD_MIN       5
#define JAIL_FD_LIMIT     64 /* targets are below it; temporary fds at or above it */
#define JAIL_HOSTNAME_MAX 64

enum jail_mount_kind { MOUNT_RO, MOUNT_RW, MOUNT_DEV };
enum jail_fd_kind { FD_RO, FD_RW, FD_APPEND, FD_LISTEN, FD_TAP };

struct jail_mount {
	enum jail_mount_kind kind;
	const char *path;
};

struct jail_symlink {
	const char *link;
	const char *target;
};

struct jail_fd {
	int num;
	enum jail_fd_kind kind;
	const char *arg;
	int tmp; /* the jailer's temporary fd (>= JAIL_FD_LIMIT), -1 until opened */
};

struct jail_opts {
	const char *root;
	uid_t uid;
	gid_t gid;
	size_t ngroups;
	gid_t groups[JAIL_MAX_GROUPS];
	size_t nmounts;
	struct jail_mount mounts[JAIL_MAX_MOUNTS];
	size_t nsymlinks;
	struct jail_symlink symlinks[JAIL_MAX_SYMLINKS];
	size_t nfds;
	struct jail_fd fds[JAIL_MAX_FDS];
	size_t ncgroups;
	const char *cgroups[JAIL_MAX_CGROUPS];
	long nofile; /* 0: unchanged */
	uint64_t keep_caps;
	size_t nenv;
	char *env[JAIL_MAX_ENV + 1]; /* NULL-terminated */
	const char *hostname;
	int report; /* -1: none */
	bool die_with_parent;
	bool no_netns;
	mode_t umask; /* PROGRAM's (default 077) */
	bool proc;    /* mount a procfs of the jail's PID namespace at /proc */
	const char *program;
	char **args; /* NULL-terminated, args[0] is PROGRAM */
};

/*
 * Parses argv (argv[0] is the jailer's name) into o. On a usage error returns
 * -1 with a message in err; o->report is set as soon as --report was parsed,
 * so the caller can report the error there too.
 */
int jail_parse(int argc, char **argv, struct jail_opts *o, char *err, size_t errlen);

/* The capability number of NAME ("dac_override", "cap_chown", ...), or -1. */
int jail_cap_by_name(const char *name);

/* Whether PATH is absolute and normal: no "." / ".." components, no "//", no trailing '/'. */
bool jail_path_ok(const char *path);

#endif
