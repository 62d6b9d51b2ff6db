/*
 * jail-probe: run as PROGRAM inside a jail by test/jailer.test.ts. Prints what
 * the jail looks like from inside as `key=value` lines on stdout, from raw
 * syscalls only (/proc is not mounted there). Then acts on its arguments:
 *   exists:PATH    exists:PATH=0|1 (lstat)
 *   writable:PATH  writable:PATH=0|1 (access W_OK: EROFS on a read-only mount)
 *   write:N        write:N=ok or the error writing a line to fd N
 *   wait           reads stdin until EOF
 *   sleep:S        sleeps S seconds
 *   exit:N         exits with status N (default 0)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

struct cap_header {
	uint32_t version;
	int pid;
};
struct cap_data {
	uint32_t effective, permitted, inheritable;
};

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void print_root(void)
{
	DIR *d = opendir("/");
	char *names[256];
	size_t n = 0;
	printf("root=");
	if (!d) {
		printf("error %s\n", strerror(errno));
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL && n < 256) {
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			names[n++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof names[0], cmp);
	for (size_t i = 0; i < n; i++) {
		printf("%s%s", i ? "," : "", names[i]);
		free(names[i]);
	}
	printf("\n");
}

static void print_fds(void)
{
	char all[512] = "";
	for (int fd = 0; fd < 64; fd++) {
		int fdf = fcntl(fd, F_GETFD);
		if (fdf < 0)
			continue;
		int fl = fcntl(fd, F_GETFL);
		struct stat st;
		const char *type = "?";
		if (fstat(fd, &st) == 0)
			type = S_ISREG(st.st_mode)    ? "reg"
			       : S_ISSOCK(st.st_mode) ? "sock"
			       : S_ISCHR(st.st_mode)  ? "chr"
			       : S_ISFIFO(st.st_mode) ? "fifo"
			       : S_ISDIR(st.st_mode)  ? "dir"
						      : "other";
		int acc = fl & O_ACCMODE;
		printf("fd.%d=%s,%s%s%s\n", fd,
		       acc == O_RDONLY   ? "rdonly"
		       : acc == O_WRONLY ? "wronly"
					 : "rdwr",
		       type, fl & O_APPEND ? ",append" : "", fdf & FD_CLOEXEC ? ",cloexec" : "");
		snprintf(all + strlen(all), sizeof all - strlen(all), "%s%d", all[0] ? "," : "",
			 fd);
	}
	printf("fds=%s\n", all);
}

int main(int argc, char **argv)
{
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	getresuid(&ru, &eu, &su);
	getresgid(&rg, &eg, &sg);
	printf("uid=%u,%u,%u\ngid=%u,%u,%u\n", ru, eu, su, rg, eg, sg);
	gid_t groups[256];
	int ng = getgroups(256, groups);
	printf("groups=");
	for (int i = 0; i < ng; i++)
		printf("%s%u", i ? "," : "", groups[i]);
	printf("\n");
	struct cap_header h = {0x20080522, 0};
	struct cap_data d[2] = {{0, 0, 0}, {0, 0, 0}};
	if (syscall(SYS_capget, &h, d) == 0) {
		printf("CapEff=%08x%08x\nCapPrm=%08x%08x\nCapInh=%08x%08x\n", d[1].effective,
		       d[0].effective, d[1].permitted, d[0].permitted, d[1].inheritable,
		       d[0].inheritable);
	}
	uint64_t amb = 0, bnd = 0;
	for (int cap = 0; cap < 64; cap++) {
		int a = prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0);
		int b = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
		if (a > 0)
			amb |= UINT64_C(1) << cap;
		if (b > 0)
			bnd |= UINT64_C(1) << cap;
	}
	printf("CapAmb=%016llx\nCapBnd=%016llx\n", (unsigned long long)amb,
	       (unsigned long long)bnd);
	printf("NoNewPrivs=%d\nSeccomp=%d\n", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
	       prctl(PR_GET_SECCOMP, 0, 0, 0, 0));
	printf("pid=%d\nppid=%d\n", (int)getpid(), (int)getppid());
	char host[256] = "";
	gethostname(host, sizeof host - 1);
	printf("hostname=%s\n", host);
	char cwd[4096];
	printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : strerror(errno));
	printf("umask=%03o\n", (unsigned)umask(0));
	print_root();
	print_fds();
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	printf("nofile=%llu,%llu\n", (unsigned long long)rl.rlim_cur,
	       (unsigned long long)rl.rlim_max);
	getrlimit(RLIMIT_CORE, &rl);
	printf("core=%llu,%llu\n", (unsigned long long)rl.rlim_cur,
	       (unsigned long long)rl.rlim_max);
	int status = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		struct stat st;
		if (strncmp(a, "exists:", 7) == 0) {
			printf("%s=%d\n", a, lstat(a + 7, &st) == 0);
		} else if (strncmp(a, "writable:", 9) == 0) {
			printf("%s=%d\n", a, access(a + 9, W_OK) == 0);
		} else if (strncmp(a, "write:", 6) == 0) {
			ssize_t n = write(atoi(a + 6), "probe\n", 6);
			printf("%s=%s\n", a, n == 6 ? "ok" : strerror(errno));
		} else if (strcmp(a, "wait") == 0) {
			printf("waiting=1\n");
			fflush(stdout);
			char buf[64];
			while (read(0, buf, sizeof buf) > 0)
				;
		} else if (strncmp(a, "sleep:", 6) == 0) {
			printf("sleeping=1\n");
			fflush(stdout);
			sleep((unsigned)atoi(a + 6));
		} else if (strncmp(a, "exit:", 5) == 0) {
			status = atoi(a + 5);
		} else {
			printf("unknown=%s\n", a);
		}
	}
	printf("done=1\n");
	return status;
}
