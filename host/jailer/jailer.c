/*
 * roost-jailer: runs as root and starts one program (a sandbox's QEMU)
 * confined: the files and sockets it needs opened as root and passed as fds,
 * new mount/PID/IPC/UTS/network namespaces, a read-only tmpfs root holding
 * only bind mounts, its own uid/gid, no capabilities (or the few kept as
 * ambient ones), NoNewPrivs. The jailer itself stays in the host PID
 * namespace as a tiny waiter that forwards SIGTERM/SIGINT/SIGHUP and exits
 * as the program did (dying by the same signal when it was killed).
 *
 * Exit status: 2 for a usage error, 1 for a setup failure before the fork,
 * 126 for a setup failure in the child (before exec), else the program's.
 * Every failure is also reported as `error <what>: <strerror>` on --report.
 * See Makefile for the build, opts.c for the options.
 */
#include "opts.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* <linux/capability.h> and <linux/if_tun.h> are not in musl's include path. */
#define CAP_VERSION_3 0x20080522
struct cap_header {
	uint32_t version;
	int pid;
};
struct cap_data {
	uint32_t effective, permitted, inheritable;
};
#define TUN_SETIFF   _IOW('T', 202, int)
#define TUN_TAP      0x0002
#define TUN_NO_PI    0x1000
#define TUN_VNET_HDR 0x4000

#define ROOT_TMPFS_OPTS "mode=0755,size=1m,nr_inodes=4096"

static const char usage[] =
	"usage: roost-jailer --root DIR --uid N --gid N [OPTIONS] -- PROGRAM [ARGS...]\n"
	"  --groups G1,G2,...   supplementary groups (default: none)\n"
	"  --ro PATH | --rw PATH | --dev PATH   bind PATH at the same place in the jail\n"
	"  --symlink LINK=TARGET   a symlink in the jail\n"
	"  --fd N:KIND:ARG      KIND: ro, rw, append (files), listen (unix socket), tap (ifname)\n"
	"  --cgroup DIR         join DIR (v1: writes 0 to tasks; v2: cgroup.procs)\n"
	"  --nofile N           RLIMIT_NOFILE\n"
	"  --keep-cap NAME      keep a capability (ambient)\n"
	"  --env K=V            the program's whole environment\n"
	"  --hostname NAME      (default roost)\n"
	"  --report FD          'pid N' or 'error ...' lines\n"
	"  --die-with-parent    SIGKILL when the parent dies\n"
	"  --no-netns           keep the host network namespace\n"
	"  --share-modes        umask 022 instead of 077 (files QEMU makes in volumes)\n"
	"  --proc               mount a procfs of the jail's PID namespace (its own processes only) at /proc\n";

static int report_fd = -1;
static volatile pid_t child_pid;

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

/* `error <what>[: <strerror(err)>]` on the report fd and stderr. */
__attribute__((format(printf, 2, 3))) static void report_error(int err, const char *fmt, ...)
{
	char what[PATH_MAX + 128], line[PATH_MAX + 256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	int n = err ? snprintf(line, sizeof line, "error %s: %s\n", what, strerror(err))
		    : snprintf(line, sizeof line, "error %s\n", what);
	size_t len = n < 0 ? 0 : (size_t)n >= sizeof line ? sizeof line - 1 : (size_t)n;
	if (report_fd >= 0)
		write_all(report_fd, line, len);
	write_all(2, "roost-jailer: ", 14);
	write_all(2, line + 6, len - 6);
}

#define FAIL(status, ...)                                                                          \
	do {                                                                                       \
		report_error(errno, __VA_ARGS__);                                                  \
		_exit(status);                                                                     \
	} while (0)
#define CHILD_FAIL(...)  FAIL(126, __VA_ARGS__)
#define JAILER_FAIL(...) FAIL(1, __VA_ARGS__)

/* fd moved to the lowest free number >= JAIL_FD_LIMIT, close-on-exec. */
static int high_fd(int fd)
{
	if (fd < 0)
		return -1;
	int h = fcntl(fd, F_DUPFD_CLOEXEC, JAIL_FD_LIMIT);
	int saved = errno;
	close(fd);
	errno = saved;
	return h;
}

/* Closes fds in [lo, hi]. */
static int close_fds(unsigned lo, unsigned hi)
{
	if (lo > hi)
		return 0;
	if (syscall(SYS_close_range, lo, hi, 0) == 0)
		return 0;
	if (errno != ENOSYS)
		return -1;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -1;
	unsigned max = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 1u << 20
			       ? 1u << 20
			       : (unsigned)rl.rlim_cur;
	for (unsigned fd = lo; fd <= hi && fd < max; fd++)
		close((int)fd);
	return 0;
}

/* Closes every fd but those in keep (n of them, any order). */
static int close_all_but(int *keep, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		for (size_t j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];
			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	}
	unsigned next = 0;
	for (size_t i = 0; i < n; i++) {
		if (keep[i] < 0 || (unsigned)keep[i] < next)
			continue;
		if ((unsigned)keep[i] > next && close_fds(next, (unsigned)keep[i] - 1) < 0)
			return -1;
		next = (unsigned)keep[i] + 1;
	}
	return close_fds(next, ~0u);
}

static void open_fd(struct jail_fd *f)
{
	int fd = -1;
	struct stat st;
	switch (f->kind) {
	case FD_RO:
	case FD_RW:
	case FD_APPEND: {
		int flags = f->kind == FD_RO   ? O_RDONLY
			    : f->kind == FD_RW ? O_RDWR
					       : O_WRONLY | O_APPEND | O_CREAT;
		/* O_NONBLOCK: never hang on a FIFO; cleared once it is known to be a file. */
		fd = open(f->arg, flags | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC, 0600);
		if (fd < 0)
			JAILER_FAIL("--fd %d: open %s", f->num, f->arg);
		if (fstat(fd, &st) < 0)
			JAILER_FAIL("--fd %d: fstat %s", f->num, f->arg);
		if (!S_ISREG(st.st_mode)) {
			errno = 0;
			JAILER_FAIL("--fd %d: %s is not a regular file", f->num, f->arg);
		}
		if (fcntl(fd, F_SETFL, flags & O_APPEND) < 0)
			JAILER_FAIL("--fd %d: fcntl %s", f->num, f->arg);
		break;
	}
	case FD_LISTEN: {
		if (lstat(f->arg, &st) == 0) {
			if (!S_ISSOCK(st.st_mode)) {
				errno = EEXIST;
				JAILER_FAIL("--fd %d: %s exists and is not a socket", f->num,
					    f->arg);
			}
			if (unlink(f->arg) < 0)
				JAILER_FAIL("--fd %d: unlink stale socket %s", f->num, f->arg);
		} else if (errno != ENOENT) {
			JAILER_FAIL("--fd %d: lstat %s", f->num, f->arg);
		}
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			JAILER_FAIL("--fd %d: socket", f->num);
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		memcpy(sa.sun_path, f->arg, strlen(f->arg) + 1);
		mode_t old = umask(0177); /* the socket is 0600 */
		int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
		umask(old);
		if (r < 0)
			JAILER_FAIL("--fd %d: bind %s", f->num, f->arg);
		if (listen(fd, 16) < 0)
			JAILER_FAIL("--fd %d: listen %s", f->num, f->arg);
		break;
	}
	case FD_TAP: {
		fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
		if (fd < 0)
			JAILER_FAIL("--fd %d: open /dev/net/tun", f->num);
		struct ifreq ifr;
		memset(&ifr, 0, sizeof ifr);
		memcpy(ifr.ifr_name, f->arg, strlen(f->arg));
		ifr.ifr_flags = TUN_TAP | TUN_NO_PI | TUN_VNET_HDR;
		if (ioctl(fd, TUN_SETIFF, &ifr) < 0)
			JAILER_FAIL("--fd %d: TUNSETIFF %s", f->num, f->arg);
		break;
	}
	}
	f->tmp = high_fd(fd);
	if (f->tmp < 0)
		JAILER_FAIL("--fd %d: fcntl F_DUPFD_CLOEXEC", f->num);
}

/*
 * Joins the cgroup DIR. On a v1 hierarchy by writing "0" (this thread) to
 * its `tasks`: the kernel then skips the host-wide threadgroup lock that a
 * write to cgroup.procs takes, whose RCU grace period cost 7-14 ms per VM
 * start on this machine; the jailer has one thread, so its process moves
 * whole, and QEMU, forked after, is born in the cgroup. v2 has no `tasks`:
 * cgroup.procs.
 */
static void join_cgroup(const char *dir)
{
	char path[PATH_MAX], pid[32];
	snprintf(path, sizeof path, "%s/tasks", dir);
	int n = snprintf(pid, sizeof pid, "0\n");
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		snprintf(path, sizeof path, "%s/cgroup.procs", dir);
		n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
		fd = open(path, O_WRONLY | O_CLOEXEC);
	}
	if (fd < 0)
		JAILER_FAIL("--cgroup: open %s", path);
	if (write(fd, pid, (size_t)n) != n)
		JAILER_FAIL("--cgroup: write %s", path);
	if (close(fd) < 0)
		JAILER_FAIL("--cgroup: close %s", path);
}

static int cap_last_cap(void)
{
	char buf[16] = {0};
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (n > 0 && buf[0] >= '0' && buf[0] <= '9')
			return atoi(buf);
	}
	return 63; /* PR_CAPBSET_DROP then stops at EINVAL */
}

/*
 * jail + path (path absolute): the place of path inside the new root, which
 * must not go through a symlink (realpath of it gives itself back: the root
 * was made canonical before).
 */
static void in_jail(char *out, const char *jail, const char *path)
{
	if ((size_t)snprintf(out, PATH_MAX, "%s%s", jail, path) >= PATH_MAX) {
		errno = ENAMETOOLONG;
		CHILD_FAIL("%s", path);
	}
}

static void check_no_symlink(const char *full, const char *path)
{
	char real[PATH_MAX];
	if (!realpath(full, real))
		CHILD_FAIL("realpath %s", path);
	if (strcmp(real, full) != 0) {
		errno = ELOOP;
		CHILD_FAIL("%s goes through a symlink in the jail", path);
	}
}

/* Creates the missing parents of full (below the jail's root, rootlen long) with mode 0755. */
static void make_parents(char *full, size_t rootlen, const char *path)
{
	for (char *p = full + rootlen + 1; (p = strchr(p, '/')) != NULL; p++) {
		*p = '\0';
		if (mkdir(full, 0755) < 0 && errno != EEXIST)
			CHILD_FAIL("mkdir %s (for %s)", full + rootlen, path);
		check_no_symlink(full, path);
		*p = '/';
	}
}

static void bind_one(const struct jail_mount *m, const char *jail, size_t rootlen)
{
	char full[PATH_MAX];
	struct stat st, dst;
	in_jail(full, jail, m->path);
	if (stat(m->path, &st) < 0)
		CHILD_FAIL("bind source %s", m->path);
	bool dir = S_ISDIR(st.st_mode);
	if (m->kind == MOUNT_DEV ? !S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode)
				 : !dir && !S_ISREG(st.st_mode)) {
		errno = 0;
		CHILD_FAIL("bind source %s is not a %s", m->path,
			   m->kind == MOUNT_DEV ? "device" : "file or directory");
	}
	make_parents(full, rootlen, m->path);
	if (lstat(full, &dst) == 0) {
		if (S_ISDIR(dst.st_mode) != dir) {
			errno = EEXIST;
			CHILD_FAIL("mount point %s", m->path);
		}
	} else if (dir) {
		if (mkdir(full, 0755) < 0)
			CHILD_FAIL("mkdir %s", m->path);
	} else {
		int fd = open(full, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (fd < 0 || close(fd) < 0)
			CHILD_FAIL("create mount point %s", m->path);
	}
	check_no_symlink(full, m->path);
	if (mount(m->path, full, NULL, MS_BIND, NULL) < 0)
		CHILD_FAIL("bind %s", m->path);
	unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID;
	if (m->kind == MOUNT_RO)
		flags |= MS_RDONLY | MS_NODEV;
	else if (m->kind == MOUNT_RW)
		flags |= MS_NODEV;
	if (mount(NULL, full, NULL, flags, NULL) < 0)
		CHILD_FAIL("remount %s", m->path);
}

static void build_root(const struct jail_opts *o, const char *jail)
{
	size_t rootlen = strlen(jail);
	char full[PATH_MAX];
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		CHILD_FAIL("make / private");
	if (mount("tmpfs", jail, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS_OPTS) < 0)
		CHILD_FAIL("mount tmpfs on %s", jail);
	/* Binds first: creating their mount points then never meets a symlink made here. */
	for (size_t i = 0; i < o->nmounts; i++)
		bind_one(&o->mounts[i], jail, rootlen);
	if (o->proc) {
		/*
		 * QEMU's 9P server sets extended attributes through /proc/self/fd.
		 * subset=pid: only the processes of the jail's own PID namespace
		 * (QEMU alone), no /proc/sys or other system files.
		 */
		in_jail(full, jail, "/proc");
		if (mkdir(full, 0555) < 0)
			CHILD_FAIL("mkdir /proc");
		if (mount("proc", full, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
			  "subset=pid,hidepid=invisible") < 0)
			CHILD_FAIL("mount proc");
	}
	for (size_t i = 0; i < o->nsymlinks; i++) {
		in_jail(full, jail, o->symlinks[i].link);
		make_parents(full, rootlen, o->symlinks[i].link);
		if (symlink(o->symlinks[i].target, full) < 0)
			CHILD_FAIL("symlink %s", o->symlinks[i].link);
	}
	char old[PATH_MAX];
	in_jail(old, jail, "/.old-root-XXXXXX");
	if (!mkdtemp(old))
		CHILD_FAIL("mkdtemp in the new root");
	if (syscall(SYS_pivot_root, jail, old) < 0)
		CHILD_FAIL("pivot_root %s", jail);
	if (chdir("/") < 0)
		CHILD_FAIL("chdir /");
	const char *inside = old + rootlen;
	if (umount2(inside, MNT_DETACH) < 0)
		CHILD_FAIL("umount the old root");
	if (rmdir(inside) < 0)
		CHILD_FAIL("rmdir %s", inside);
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
		CHILD_FAIL("remount / read-only");
}

static void set_caps(uint64_t keep, int last_cap)
{
	for (int cap = 0; cap <= last_cap; cap++) {
		if (keep & (UINT64_C(1) << cap))
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			if (errno == EINVAL)
				break;
			CHILD_FAIL("PR_CAPBSET_DROP %d", cap);
		}
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		CHILD_FAIL("PR_CAP_AMBIENT_CLEAR_ALL");
}

static void change_ids(const struct jail_opts *o)
{
	if (o->keep_caps && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		CHILD_FAIL("PR_SET_KEEPCAPS");
	if (setgroups(o->ngroups, o->groups) < 0)
		CHILD_FAIL("setgroups");
	if (setresgid(o->gid, o->gid, o->gid) < 0)
		CHILD_FAIL("setresgid %u", (unsigned)o->gid);
	if (setresuid(o->uid, o->uid, o->uid) < 0)
		CHILD_FAIL("setresuid %u", (unsigned)o->uid);
	/* Exactly the kept set (often none) in effective, permitted and inheritable. */
	struct cap_header h = {.version = CAP_VERSION_3, .pid = 0};
	struct cap_data d[2];
	for (int i = 0; i < 2; i++) {
		uint32_t v = (uint32_t)(o->keep_caps >> (32 * i));
		d[i].effective = d[i].permitted = d[i].inheritable = v;
	}
	if (syscall(SYS_capset, &h, d) < 0)
		CHILD_FAIL("capset");
	for (int cap = 0; cap < 64; cap++) {
		if ((o->keep_caps & (UINT64_C(1) << cap)) &&
		    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
			CHILD_FAIL("PR_CAP_AMBIENT_RAISE %d", cap);
	}
	if (o->keep_caps && prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
		CHILD_FAIL("PR_SET_KEEPCAPS 0");
}

__attribute__((noreturn)) static void child(struct jail_opts *o, const char *jail, int live_r,
					    int last_cap)
{
	if (sethostname(o->hostname, strlen(o->hostname)) < 0)
		CHILD_FAIL("sethostname");
	build_root(o, jail);
	int keep[5 + JAIL_MAX_FDS + 2];
	size_t nkeep = 0;
	for (int fd = 0; fd < 5; fd++)
		keep[nkeep++] = fd;
	for (size_t i = 0; i < o->nfds; i++) {
		if (dup2(o->fds[i].tmp, o->fds[i].num) < 0)
			CHILD_FAIL("dup2 to fd %d", o->fds[i].num);
		keep[nkeep++] = o->fds[i].num;
	}
	keep[nkeep++] = report_fd;
	keep[nkeep++] = live_r;
	if (close_all_but(keep, nkeep) < 0)
		CHILD_FAIL("close fds");
	struct rlimit core = {0, 0};
	if (setrlimit(RLIMIT_CORE, &core) < 0)
		CHILD_FAIL("setrlimit RLIMIT_CORE");
	if (o->nofile) {
		struct rlimit rl = {(rlim_t)o->nofile, (rlim_t)o->nofile};
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			CHILD_FAIL("setrlimit RLIMIT_NOFILE %ld", o->nofile);
	}
	set_caps(o->keep_caps, last_cap);
	change_ids(o);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		CHILD_FAIL("PR_SET_NO_NEW_PRIVS");
	/* After the credential change, which clears it. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		CHILD_FAIL("PR_SET_PDEATHSIG");
	struct pollfd p = {.fd = live_r, .events = POLLIN};
	int r = poll(&p, 1, 0);
	if (r < 0)
		CHILD_FAIL("poll the jailer's liveness pipe");
	if (r > 0 && (p.revents & (POLLHUP | POLLERR)))
		_exit(126); /* the jailer is gone: nobody to report to */
	umask(o->umask);
	sigset_t none;
	sigemptyset(&none);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL); /* ignored dispositions survive execve */
	if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
		CHILD_FAIL("sigprocmask");
	execve(o->program, o->args, o->env);
	CHILD_FAIL("execve %s", o->program);
}

static void forward(int sig)
{
	if (child_pid > 0)
		kill(child_pid, sig);
}

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP};

int main(int argc, char **argv)
{
	static struct jail_opts o;
	char err[PATH_MAX + 128];
	pid_t parent = getppid();
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		write_all(1, usage, sizeof usage - 1);
		return 0;
	}
	if (jail_parse(argc, argv, &o, err, sizeof err) < 0) {
		report_fd = o.report;
		errno = 0;
		report_error(0, "usage: %s", err);
		write_all(2, usage, sizeof usage - 1);
		return 2;
	}
	report_fd = o.report;
	if (report_fd >= 0) {
		int fl = fcntl(report_fd, F_GETFD);
		if (fl < 0 || fcntl(report_fd, F_SETFD, fl | FD_CLOEXEC) < 0) {
			report_fd = -1;
			JAILER_FAIL("--report %d", o.report);
		}
	}
	if (geteuid() != 0) {
		errno = EPERM;
		JAILER_FAIL("roost-jailer must run as root");
	}
	if (o.die_with_parent) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
			JAILER_FAIL("PR_SET_PDEATHSIG");
		if (getppid() != parent)
			_exit(1);
	}
	umask(022);
	signal(SIGPIPE, SIG_IGN);
	struct rlimit core = {0, 0};
	if (setrlimit(RLIMIT_CORE, &core) < 0)
		JAILER_FAIL("setrlimit RLIMIT_CORE");
	char jail[PATH_MAX];
	if (!realpath(o.root, jail))
		JAILER_FAIL("--root %s", o.root);
	struct stat st;
	if (stat(jail, &st) < 0)
		JAILER_FAIL("--root %s", o.root);
	if (!S_ISDIR(st.st_mode) || strcmp(jail, "/") == 0) {
		errno = ENOTDIR;
		JAILER_FAIL("--root %s", o.root);
	}
	int last_cap = cap_last_cap();
	for (size_t i = 0; i < o.ncgroups; i++)
		join_cgroup(o.cgroups[i]);
	for (size_t i = 0; i < o.nfds; i++)
		open_fd(&o.fds[i]);
	int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
	if (!o.no_netns)
		flags |= CLONE_NEWNET;
	if (unshare(flags) < 0)
		JAILER_FAIL("unshare");
	int live[2];
	if (pipe2(live, O_CLOEXEC) < 0)
		JAILER_FAIL("pipe2");
	/* Above every target fd, so the child's dup2s cannot hit them. */
	live[0] = high_fd(live[0]);
	live[1] = high_fd(live[1]);
	if (live[0] < 0 || live[1] < 0)
		JAILER_FAIL("fcntl F_DUPFD_CLOEXEC");
	sigset_t fwd, old;
	sigemptyset(&fwd);
	for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
		sigaddset(&fwd, forwarded[i]);
	if (sigprocmask(SIG_BLOCK, &fwd, &old) < 0)
		JAILER_FAIL("sigprocmask");
	pid_t pid = fork();
	if (pid < 0)
		JAILER_FAIL("fork");
	if (pid == 0) {
		if (close(live[1]) < 0)
			CHILD_FAIL("close");
		child(&o, jail, live[0], last_cap);
	}
	child_pid = pid;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = forward;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
		if (sigaction(forwarded[i], &sa, NULL) < 0)
			JAILER_FAIL("sigaction");
	}
	if (sigprocmask(SIG_SETMASK, &old, NULL) < 0)
		JAILER_FAIL("sigprocmask");
	if (report_fd >= 0) {
		char line[32];
		int n = snprintf(line, sizeof line, "pid %d\n", (int)pid);
		write_all(report_fd, line, (size_t)n);
	}
	/* Every other fd: 0-4 are pipes whose readers must see EOF when the program exits. */
	int keep[1] = {live[1]};
	report_fd = -1;
	if (close_all_but(keep, 1) < 0)
		_exit(1);
	int status;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			_exit(1);
	}
	if (WIFSIGNALED(status)) {
		int sig = WTERMSIG(status);
		sigset_t one;
		sigemptyset(&one);
		sigaddset(&one, sig);
		signal(sig, SIG_DFL);
		sigprocmask(SIG_UNBLOCK, &one, NULL);
		kill(getpid(), sig);
		_exit(128 + sig); /* a signal whose default is to be ignored */
	}
	_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}
