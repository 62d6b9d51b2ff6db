/* roost-jailer's command line: see opts.h. */
#include "opts.h"

#include <errno.h>
#include <limits.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

static const struct {
	const char *name;
	int cap;
} caps[] = {
	{"chown", 0},
	{"dac_override", 1},
	{"dac_read_search", 2},
	{"fowner", 3},
	{"fsetid", 4},
	{"kill", 5},
	{"setgid", 6},
	{"setuid", 7},
	{"setpcap", 8},
	{"net_bind_service", 10},
	{"net_broadcast", 11},
	{"net_admin", 12},
	{"net_raw", 13},
	{"ipc_lock", 14},
	{"ipc_owner", 15},
	{"sys_chroot", 18},
	{"sys_ptrace", 19},
	{"sys_admin", 21},
	{"sys_nice", 23},
	{"sys_resource", 24},
	{"sys_time", 25},
	{"mknod", 27},
	{"lease", 28},
	{"audit_write", 29},
	{"setfcap", 31},
	{"sys_rawio", 17},
	{"sys_boot", 22},
	{"sys_tty_config", 26},
	{"wake_alarm", 35},
	{"block_suspend", 36},
	{"perfmon", 38},
	{"bpf", 39},
	{"checkpoint_restore", 40},
};

int jail_cap_by_name(const char *name)
{
	if (strncmp(name, "cap_", 4) == 0 || strncmp(name, "CAP_", 4) == 0)
		name += 4;
	for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
		if (strcasecmp(name, caps[i].name) == 0)
			return caps[i].cap;
	}
	return -1;
}

bool jail_path_ok(const char *path)
{
	if (path[0] != '/' || strlen(path) >= PATH_MAX)
		return false;
	const char *p = path;
	while (*p == '/') {
		const char *c = p + 1;
		size_t n = strcspn(c, "/");
		if (n == 0) /* "//", a trailing '/' or "/" alone */
			return false;
		if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		p = c + n;
	}
	return true;
}

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
						      ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* A decimal number in [min, max], nothing else. */
static bool parse_num(const char *s, long long min, long long max, long long *out)
{
	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	char *end;
	long long v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static int parse_groups(char *list, struct jail_opts *o, char *err, size_t errlen)
{
	o->ngroups = 0;
	if (*list == '\0')
		return 0;
	for (char *p = list;;) {
		char *comma = strchr(p, ',');
		if (comma)
			*comma = '\0';
		long long g;
		if (!parse_num(p, 1, UINT32_MAX - 1, &g))
			return fail(err, errlen, "--groups: bad group '%s' (decimal, non-zero)", p);
		if (o->ngroups == JAIL_MAX_GROUPS)
			return fail(err, errlen, "--groups: more than %d groups", JAIL_MAX_GROUPS);
		o->groups[o->ngroups++] = (gid_t)g;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

static int parse_fd(char *spec, struct jail_opts *o, char *err, size_t errlen)
{
	char *c1 = strchr(spec, ':');
	char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
	if (!c2)
		return fail(err, errlen, "--fd '%s': expected N:KIND:ARG", spec);
	*c1 = '\0';
	*c2 = '\0';
	const char *kind = c1 + 1, *arg = c2 + 1;
	long long n;
	if (!parse_num(spec, JAIL_FD_MIN, JAIL_FD_LIMIT - 1, &n))
		return fail(err, errlen, "--fd: bad fd number '%s' (%d to %d)", spec, JAIL_FD_MIN,
			    JAIL_FD_LIMIT - 1);
	for (size_t i = 0; i < o->nfds; i++) {
		if (o->fds[i].num == n)
			return fail(err, errlen, "--fd: fd %lld given twice", n);
	}
	struct jail_fd f = {.num = (int)n, .arg = arg, .tmp = -1};
	if (strcmp(kind, "ro") == 0)
		f.kind = FD_RO;
	else if (strcmp(kind, "rw") == 0)
		f.kind = FD_RW;
	else if (strcmp(kind, "append") == 0)
		f.kind = FD_APPEND;
	else if (strcmp(kind, "listen") == 0)
		f.kind = FD_LISTEN;
	else if (strcmp(kind, "tap") == 0)
		f.kind = FD_TAP;
	else
		return fail(err, errlen,
			    "--fd %lld: unknown kind '%s' (ro, rw, append, listen, tap)", n, kind);
	if (f.kind == FD_TAP) {
		if (*arg == '\0' || strlen(arg) >= IFNAMSIZ || strchr(arg, '/') || strchr(arg, '%'))
			return fail(err, errlen, "--fd %lld: bad interface name '%s'", n, arg);
	} else {
		if (!jail_path_ok(arg))
			return fail(err, errlen, "--fd %lld: '%s' is not an absolute normal path",
				    n, arg);
		if (f.kind == FD_LISTEN && strlen(arg) >= sizeof((struct sockaddr_un *)0)->sun_path)
			return fail(err, errlen, "--fd %lld: socket path '%s' is too long", n, arg);
	}
	if (o->nfds == JAIL_MAX_FDS)
		return fail(err, errlen, "--fd: too many");
	o->fds[o->nfds++] = f;
	return 0;
}

int jail_parse(int argc, char **argv, struct jail_opts *o, char *err, size_t errlen)
{
	memset(o, 0, sizeof *o);
	o->report = -1;
	o->hostname = "roost";
	o->umask = 077;
	bool have_uid = false, have_gid = false;
	int i = 1;
	for (; i < argc; i++) {
		const char *opt = argv[i];
		if (strcmp(opt, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(opt, "--die-with-parent") == 0) {
			o->die_with_parent = true;
			continue;
		}
		if (strcmp(opt, "--share-modes") == 0) {
			o->umask = 022;
			continue;
		}
		if (strcmp(opt, "--proc") == 0) {
			o->proc = true;
			continue;
		}
		if (strcmp(opt, "--no-netns") == 0) {
			o->no_netns = true;
			continue;
		}
		if (strncmp(opt, "--", 2) != 0)
			return fail(err, errlen,
				    "unexpected argument '%s' (PROGRAM comes after --)", opt);
		if (i + 1 >= argc)
			return fail(err, errlen, "%s needs a value", opt);
		char *val = argv[++i];
		long long n;
		if (strcmp(opt, "--root") == 0) {
			if (!jail_path_ok(val))
				return fail(err, errlen, "--root '%s': not an absolute normal path",
					    val);
			o->root = val;
		} else if (strcmp(opt, "--uid") == 0) {
			if (!parse_num(val, 1, UINT32_MAX - 1, &n))
				return fail(err, errlen, "--uid '%s': a non-zero decimal uid", val);
			o->uid = (uid_t)n;
			have_uid = true;
		} else if (strcmp(opt, "--gid") == 0) {
			if (!parse_num(val, 1, UINT32_MAX - 1, &n))
				return fail(err, errlen, "--gid '%s': a non-zero decimal gid", val);
			o->gid = (gid_t)n;
			have_gid = true;
		} else if (strcmp(opt, "--groups") == 0) {
			if (parse_groups(val, o, err, errlen) < 0)
				return -1;
		} else if (strcmp(opt, "--ro") == 0 || strcmp(opt, "--rw") == 0 ||
			   strcmp(opt, "--dev") == 0) {
			if (!jail_path_ok(val))
				return fail(err, errlen, "%s '%s': not an absolute normal path",
					    opt, val);
			if (o->nmounts == JAIL_MAX_MOUNTS)
				return fail(err, errlen, "too many mounts");
			o->mounts[o->nmounts].path = val;
			o->mounts[o->nmounts++].kind = opt[2] == 'd'   ? MOUNT_DEV
						       : opt[3] == 'o' ? MOUNT_RO
								       : MOUNT_RW;
		} else if (strcmp(opt, "--symlink") == 0) {
			char *eq = strchr(val, '=');
			if (!eq)
				return fail(err, errlen, "--symlink '%s': expected LINK=TARGET",
					    val);
			*eq = '\0';
			if (!jail_path_ok(val) || eq[1] == '\0' || strlen(eq + 1) >= PATH_MAX)
				return fail(err, errlen,
					    "--symlink '%s': LINK must be an absolute normal path, "
					    "TARGET not empty",
					    val);
			if (o->nsymlinks == JAIL_MAX_SYMLINKS)
				return fail(err, errlen, "too many symlinks");
			o->symlinks[o->nsymlinks].link = val;
			o->symlinks[o->nsymlinks++].target = eq + 1;
		} else if (strcmp(opt, "--fd") == 0) {
			if (parse_fd(val, o, err, errlen) < 0)
				return -1;
		} else if (strcmp(opt, "--cgroup") == 0) {
			if (!jail_path_ok(val))
				return fail(err, errlen,
					    "--cgroup '%s': not an absolute normal path", val);
			if (o->ncgroups == JAIL_MAX_CGROUPS)
				return fail(err, errlen, "too many cgroups");
			o->cgroups[o->ncgroups++] = val;
		} else if (strcmp(opt, "--nofile") == 0) {
			if (!parse_num(val, 1, 1 << 20, &n))
				return fail(err, errlen, "--nofile '%s': 1 to %d", val, 1 << 20);
			o->nofile = (long)n;
		} else if (strcmp(opt, "--keep-cap") == 0) {
			int cap = jail_cap_by_name(val);
			if (cap < 0)
				return fail(err, errlen, "--keep-cap '%s': unknown capability",
					    val);
			o->keep_caps |= UINT64_C(1) << cap;
		} else if (strcmp(opt, "--env") == 0) {
			if (val[0] == '=' || !strchr(val, '='))
				return fail(err, errlen, "--env '%s': expected K=V", val);
			if (o->nenv == JAIL_MAX_ENV)
				return fail(err, errlen, "too many --env");
			o->env[o->nenv++] = val;
		} else if (strcmp(opt, "--hostname") == 0) {
			size_t l = strlen(val);
			if (l == 0 || l > JAIL_HOSTNAME_MAX || strchr(val, '/'))
				return fail(err, errlen, "--hostname '%s': 1 to %d characters", val,
					    JAIL_HOSTNAME_MAX);
			o->hostname = val;
		} else if (strcmp(opt, "--report") == 0) {
			if (!parse_num(val, 0, INT_MAX, &n))
				return fail(err, errlen, "--report '%s': an fd number", val);
			o->report = (int)n;
		} else {
			return fail(err, errlen, "unknown option '%s'", opt);
		}
	}
	if (i >= argc)
		return fail(err, errlen, "no PROGRAM (after --)");
	o->program = argv[i];
	o->args = argv + i;
	if (o->program[0] != '/')
		return fail(err, errlen, "PROGRAM '%s' must be an absolute path", o->program);
	if (!o->root)
		return fail(err, errlen, "--root is required");
	if (!have_uid || !have_gid)
		return fail(err, errlen, "--uid and --gid are required");
	for (size_t k = 0; k < o->nfds; k++) {
		if (o->fds[k].num == o->report)
			return fail(err, errlen, "--fd %d is also the --report fd", o->report);
	}
	o->env[o->nenv] = NULL;
	return 0;
}
