/*
 * PID 1: boots the guest (mounts, the command root), then serves the host
 * forever with one poll() loop over the port, the signalfd and every
 * stream's fds. See agent.h for the parts and the protocol readings.
 */
#include "boot.h"

#include "agent.h"
#include "exec.h"
#include "freeze.h"
#include "net.h"
#include "port.h"
#include "proto.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_PORT "roost.agent"

bool root_requested, root_ok, root_on_disk;
char root_err[1024];
int devnull_fd = -1;
static int sig_fd = -1;

/* Reaps children for up to `ms`, returning early once none are left. */
static void reap_for(unsigned ms)
{
	for (uint64_t end = now_ms() + ms; now_ms() < end;) {
		pid_t r;
		while ((r = waitpid(-1, NULL, WNOHANG)) > 0)
			;
		if (r < 0 && errno == ECHILD)
			return;
		sleep_ms(10);
	}
}

void do_poweroff(const char *why)
{
	logmsg("power off: %s", why);
	/* Writers blocked on a frozen disk could not even be killed. */
	int err = fs_thaw();
	if (err)
		logmsg("FITHAW %s: %s", ROOT_RW, strerror(err));
	kill(-1, SIGTERM);
	reap_for(500);
	kill(-1, SIGKILL);
	reap_for(200);
	sync();
	/* QEMU runs with -no-reboot and the kernel with reboot=t: a reboot
	 * ends the VM. (RB_POWER_OFF would only halt a machine without ACPI.) */
	reboot(RB_AUTOBOOT);
	logmsg("reboot: %s", strerror(errno));
}

static void handle_signals(void)
{
	struct signalfd_siginfo si[16];
	for (;;) {
		ssize_t n = read(sig_fd, si, sizeof si);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (size_t i = 0; i < (size_t)n / sizeof si[0]; i++) {
			int sig = (int)si[i].ssi_signo;
			if (sig == SIGCHLD)
				continue; /* reaped below */
			if (sig == SIGPWR) {
				do_poweroff("SIGPWR");
				continue;
			}
			exec_signal_all(sig);
		}
	}
	reap_children();
}

/* ------------------------------------------------------------------ */
/* boot */

static void ensure_stdio(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int n = fd == 0 ? -1 : open("/dev/console", O_WRONLY | O_NOCTTY);
		if (n < 0)
			n = open("/dev/null", O_RDWR);
		if (n >= 0 && n != fd) {
			dup2(n, fd);
			close(n);
		}
	}
}

static void boot_mounts(void)
{
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", true);
	ensure_stdio();
	console_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	do_mount("proc", "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL, true);
	do_mount("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL, true);
	do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		 "gid=5,mode=620,ptmxmode=0666", true);
	/* Point /dev/ptmx at this devpts instance. */
	unlink("/dev/ptmx");
	if (symlink("pts/ptmx", "/dev/ptmx") < 0)
		logmsg("symlink /dev/ptmx: %s", strerror(errno));
	do_mount("tmpfs", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777", true);
	do_mount("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777", true);
	do_mount("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755", true);
	devnull_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull_fd < 0)
		logmsg("open /dev/null: %s", strerror(errno));
}

static void wait_for_device(const char *dev)
{
	for (int i = 0; i < 200 && access(dev, F_OK) < 0; i++)
		sleep_ms(10);
}

/* The command root: the image's read-only filesystem (dev) under an overlay
 * whose upper layer is the sandbox's own disk (ext4 on `disk`) or, without
 * one, a tmpfs. Processes are chrooted into CMD_ROOT; the agent stays out. */
static void setup_root(const char *dev, const char *fstype, const char *disk)
{
	root_requested = true;
	wait_for_device(dev);
	mkdir_p(ROOT_LOWER, 0755);
	const char *types[] = {fstype, NULL, NULL};
	if (!fstype) {
		types[0] = "erofs";
		types[1] = "ext4";
	}
	int err = 0;
	const char *used = NULL;
	for (int i = 0; types[i]; i++) {
		if (mount(dev, ROOT_LOWER, types[i], MS_RDONLY, NULL) == 0) {
			used = types[i];
			break;
		}
		err = errno;
	}
	if (!used) {
		snprintf(root_err, sizeof root_err, "mount %s on %s (%s): %s", dev, ROOT_LOWER,
			 fstype ? fstype : "erofs/ext4", strerror(err));
		logmsg("%s", root_err);
		return;
	}
	if (disk) {
		wait_for_device(disk);
		/* discard: what the guest deletes is freed on the host too.
		 * noinit_itable: the host made the filesystem with lazy inode
		 * tables; zeroing them here would write megabytes per sandbox. */
		if (do_mount(disk, ROOT_RW, "ext4", MS_NOSUID | MS_NODEV | MS_NOATIME,
			     "noinit_itable,discard", false) < 0) {
			snprintf(root_err, sizeof root_err, "mount disk %s on %s: %s", disk,
				 ROOT_RW, strerror(errno));
			return;
		}
	} else if (do_mount("tmpfs", ROOT_RW, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", false) <
		   0) {
		snprintf(root_err, sizeof root_err, "mount tmpfs on %s: %s", ROOT_RW,
			 strerror(errno));
		return;
	}
	if (mkdir_p(ROOT_UPPER, 0755) < 0 || mkdir_p(ROOT_WORK, 0755) < 0) {
		snprintf(root_err, sizeof root_err, "mkdir %s: %s", ROOT_UPPER, strerror(errno));
		logmsg("%s", root_err);
		return;
	}
	if (do_mount("overlay", CMD_ROOT, "overlay", 0,
		     "lowerdir=" ROOT_LOWER ",upperdir=" ROOT_UPPER ",workdir=" ROOT_WORK,
		     false) < 0) {
		snprintf(root_err, sizeof root_err, "mount overlay on %s: %s", CMD_ROOT,
			 strerror(errno));
		return;
	}
	root_ok = true;
	root_on_disk = disk != NULL;
	root_mount_extras();
}

void root_mount_extras(void)
{
	const unsigned long nosuid_nodev = MS_NOSUID | MS_NODEV;
	do_mount("proc", CMD_ROOT "/proc", "proc", nosuid_nodev | MS_NOEXEC, NULL, false);
	do_mount("sysfs", CMD_ROOT "/sys", "sysfs", nosuid_nodev | MS_NOEXEC, NULL, false);
	/* The agent's /dev with its devpts and shm, so PTYs allocated by the
	 * agent have the same names inside the root. */
	do_mount("/dev", CMD_ROOT "/dev", NULL, MS_BIND | MS_REC, NULL, false);
	if (root_on_disk) {
		/* /tmp and /run stay on the disk, as in a container: large
		 * temporary files must not eat guest memory. */
		if (mkdir(CMD_ROOT "/tmp", 01777) == 0)
			chmod(CMD_ROOT "/tmp", 01777);
	} else {
		do_mount("tmpfs", CMD_ROOT "/tmp", "tmpfs", nosuid_nodev, "mode=1777", false);
		do_mount("tmpfs", CMD_ROOT "/run", "tmpfs", nosuid_nodev, "mode=0755", false);
	}
}

static void setup_signals(void)
{
	sigset_t set;
	sigemptyset(&set);
	int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGPWR};
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaddset(&set, sigs[i]);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0)
		logmsg("signalfd: %s", strerror(errno));
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

/* ------------------------------------------------------------------ */
/* main loop */

enum { ROLE_IN, ROLE_OUT1, ROLE_OUT2, ROLE_ORPHAN1, ROLE_ORPHAN2 };

int main(void)
{
	setup_signals();
	umask(022);
	if (chdir("/") < 0) {
		/* nothing sensible to do */
	}
	boot_mounts();
	if (sethostname("roost", 5) < 0)
		logmsg("sethostname: %s", strerror(errno));

	static char cmdline[4096];
	if (read_small("/proc/cmdline", cmdline, sizeof cmdline) < 0)
		cmdline[0] = 0;
	/* The benchmark floor: the same kernel and initramfs, powered off as the first act. */
	char flag[8];
	if (cmdline_get(cmdline, "roost.poweroff", flag, sizeof flag) && strcmp(flag, "1") == 0)
		reboot(RB_AUTOBOOT);

	loopback_up();
	char port_name[256], root_dev[256] = "", root_type[64], disk_dev[256];
	if (!cmdline_get(cmdline, "roost.port", port_name, sizeof port_name))
		strcpy(port_name, DEFAULT_PORT);
	if (cmdline_get(cmdline, "roost.root", root_dev, sizeof root_dev)) {
		bool has_type =
			cmdline_get(cmdline, "roost.rootfstype", root_type, sizeof root_type);
		bool has_disk = cmdline_get(cmdline, "roost.disk", disk_dev, sizeof disk_dev);
		setup_root(root_dev, has_type ? root_type : NULL, has_disk ? disk_dev : NULL);
	}

	port_start(port_name);
	logmsg("ready (%s%s)", root_ok ? "root " : "no root", root_ok ? root_dev : "");

	/* The signalfd, the port, 3 fds per stream and 2 per orphan. */
	enum { MAX_POLL = 2 + 3 * ROOST_MAX_STREAMS + 2 * MAX_ORPHANS };
	static struct pollfd pfd[MAX_POLL];
	static struct exec *pexec[MAX_POLL];
	static int prole[MAX_POLL];

	for (;;) {
		uint64_t now = now_ms();
		int timeout = -1;

		/* Deadlines, draining and finishing. */
		for (struct exec *e = execs, *next; e; e = next) {
			next = e->next;
			if (!e->reaped && e->deadline && now >= e->deadline) {
				e->timed_out = true;
				if (e->is_call && !e->term_sent) {
					/* Let it clean up; kill it if it does not end. */
					exec_kill(e, SIGTERM);
					e->term_sent = true;
					e->deadline = now + CALL_TERM_GRACE_MS;
				} else {
					exec_kill(e, SIGKILL);
					e->deadline = 0;
				}
			}
			if (!e->reaped && e->deadline) {
				uint64_t d = e->deadline - now;
				if (timeout < 0 || d < (uint64_t)timeout)
					timeout = (int)(d > INT32_MAX ? INT32_MAX : d);
			}
			if (e->reaped) {
				exec_read_out(e, 0);
				exec_read_out(e, 1);
				if (e->out_done[0] && e->out_done[1])
					exec_finish(e);
			}
		}
		if (port_connected && out.len)
			port_flush();
		if (sig_fd < 0) {
			/* No signalfd: poll for children instead. */
			reap_children();
			if (timeout < 0 || timeout > 100)
				timeout = 100;
		}
		if (!port_connected) {
			uint64_t d = next_port_check > now ? next_port_check - now : 0;
			if (timeout < 0 || d < (uint64_t)timeout)
				timeout = (int)d;
		}

		int n = 0, port_idx = -1, sig_idx = -1;
		if (sig_fd >= 0) {
			pfd[n] = (struct pollfd){.fd = sig_fd, .events = POLLIN};
			sig_idx = n++;
		}
		if (port_connected) {
			short ev = 0;
			if (out.len < OUT_PORT_LIMIT)
				ev |= POLLIN;
			if (out.len)
				ev |= POLLOUT;
			pfd[n] = (struct pollfd){.fd = port_fd, .events = ev};
			port_idx = n++;
		}
		for (struct exec *e = execs; e; e = e->next) {
			if (e->reaped)
				continue;
			if (e->in_fd >= 0 && !e->stdin_closed && (e->inq_len || e->stdin_eof)) {
				pfd[n] = (struct pollfd){.fd = e->in_fd, .events = POLLOUT};
				pexec[n] = e;
				prole[n++] = ROLE_IN;
			}
			for (int i = 0; i < 2; i++) {
				if (e->out_done[i] || e->credit[i] == 0 ||
				    out.len >= OUT_PIPE_LIMIT)
					continue;
				pfd[n] = (struct pollfd){.fd = e->out_fd[i], .events = POLLIN};
				pexec[n] = e;
				prole[n++] = i == 0 ? ROLE_OUT1 : ROLE_OUT2;
			}
		}
		/* Orphans are never reaped while listed; one at EOF is not polled. */
		for (struct exec *e = orphans; e; e = e->next) {
			for (int i = 0; i < 2; i++) {
				if (e->out_done[i])
					continue;
				pfd[n] = (struct pollfd){.fd = e->out_fd[i], .events = POLLIN};
				pexec[n] = e;
				prole[n++] = i == 0 ? ROLE_ORPHAN1 : ROLE_ORPHAN2;
			}
		}

		int r = poll(pfd, (nfds_t)n, timeout);
		if (r < 0) {
			if (errno != EINTR) {
				logmsg("poll: %s", strerror(errno));
				sleep_ms(10);
			}
			continue;
		}

		/* Exec fds first: handling the port may free execs. */
		for (int i = 0; i < n; i++) {
			if (i == sig_idx || i == port_idx || pfd[i].revents == 0)
				continue;
			struct exec *e = pexec[i];
			if (prole[i] == ROLE_IN)
				exec_write_in(e);
			else if (prole[i] == ROLE_ORPHAN1 || prole[i] == ROLE_ORPHAN2)
				orphan_drain(e, prole[i] == ROLE_ORPHAN1 ? 0 : 1);
			else
				exec_read_out(e, prole[i] == ROLE_OUT1 ? 0 : 1);
		}
		if (sig_idx >= 0 && pfd[sig_idx].revents)
			handle_signals();
		if (port_idx >= 0 && pfd[port_idx].revents) {
			short rev = pfd[port_idx].revents;
			if (rev & POLLOUT)
				port_flush();
			if (rev & (POLLIN | POLLHUP | POLLERR))
				port_read((rev & (POLLHUP | POLLERR)) != 0);
		}
		if (!port_connected && now_ms() >= next_port_check)
			port_check();
	}
}
