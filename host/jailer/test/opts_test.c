/* Unit tests of roost-jailer's command line (opts.c). */
#include "check.h"
#include "opts.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static struct jail_opts o;
static char err[512];
static char *argv_copy[64];
static int argc_copy;

/* Parses the NULL-terminated arguments (after the program name) from writable copies. */
static int parse(const char *first, ...)
{
	for (int i = 0; i < argc_copy; i++)
		free(argv_copy[i]);
	argc_copy = 0;
	argv_copy[argc_copy++] = strdup("roost-jailer");
	va_list ap;
	va_start(ap, first);
	for (const char *a = first; a; a = va_arg(ap, const char *))
		argv_copy[argc_copy++] = strdup(a);
	va_end(ap);
	argv_copy[argc_copy] = NULL;
	err[0] = '\0';
	return jail_parse(argc_copy, argv_copy, &o, err, sizeof err);
}

#define BASE "--root", "/run/jail", "--uid", "1000", "--gid", "1001"

static void test_minimal(void)
{
	CHECK(parse(BASE, "--", "/usr/bin/qemu", "-version", NULL) == 0);
	CHECK(strcmp(o.root, "/run/jail") == 0);
	CHECK(o.uid == 1000 && o.gid == 1001);
	CHECK(o.ngroups == 0 && o.nmounts == 0 && o.nfds == 0 && o.nenv == 0);
	CHECK(o.env[0] == NULL);
	CHECK(strcmp(o.hostname, "roost") == 0);
	CHECK(o.report == -1 && !o.die_with_parent && !o.no_netns && o.nofile == 0);
	CHECK(strcmp(o.program, "/usr/bin/qemu") == 0);
	CHECK(strcmp(o.args[0], "/usr/bin/qemu") == 0 && strcmp(o.args[1], "-version") == 0);
	CHECK(o.args[2] == NULL);
	CHECK(o.keep_caps == 0);
}

static void test_everything(void)
{
	CHECK(parse(BASE, "--groups", "5,6,70000", "--ro", "/usr", "--rw", "/var/vol", "--dev",
		    "/dev/null", "--symlink", "/lib=usr/lib", "--fd", "5:ro:/img/ram", "--fd",
		    "63:listen:/run/q.sock", "--fd", "7:tap:rtap0", "--fd", "8:append:/log", "--fd",
		    "9:rw:/disk", "--cgroup", "/sys/fs/cgroup/pids/x", "--nofile", "4096",
		    "--keep-cap", "dac_override", "--keep-cap", "CAP_FOWNER", "--keep-cap", "chown",
		    "--env", "A=1", "--env", "B=x=y", "--hostname", "box", "--report", "3",
		    "--die-with-parent", "--no-netns", "--", "/bin/q", NULL) == 0);
	CHECK(o.ngroups == 3 && o.groups[0] == 5 && o.groups[2] == 70000);
	CHECK(o.nmounts == 3);
	CHECK(o.mounts[0].kind == MOUNT_RO && strcmp(o.mounts[0].path, "/usr") == 0);
	CHECK(o.mounts[1].kind == MOUNT_RW && o.mounts[2].kind == MOUNT_DEV);
	CHECK(o.nsymlinks == 1 && strcmp(o.symlinks[0].link, "/lib") == 0);
	CHECK(strcmp(o.symlinks[0].target, "usr/lib") == 0);
	CHECK(o.nfds == 5);
	CHECK(o.fds[0].num == 5 && o.fds[0].kind == FD_RO && strcmp(o.fds[0].arg, "/img/ram") == 0);
	CHECK(o.fds[1].num == 63 && o.fds[1].kind == FD_LISTEN);
	CHECK(o.fds[2].kind == FD_TAP && strcmp(o.fds[2].arg, "rtap0") == 0);
	CHECK(o.fds[3].kind == FD_APPEND && o.fds[4].kind == FD_RW && o.fds[4].tmp == -1);
	CHECK(o.ncgroups == 1);
	CHECK(o.nofile == 4096);
	CHECK(o.keep_caps == ((1u << 0) | (1u << 1) | (1u << 3)));
	CHECK(o.nenv == 2 && strcmp(o.env[1], "B=x=y") == 0 && o.env[2] == NULL);
	CHECK(strcmp(o.hostname, "box") == 0);
	CHECK(o.report == 3 && o.die_with_parent && o.no_netns);
}

static void test_paths(void)
{
	CHECK(jail_path_ok("/a"));
	CHECK(jail_path_ok("/a/b.c/..d/.e"));
	CHECK(!jail_path_ok("/"));
	CHECK(!jail_path_ok("a/b"));
	CHECK(!jail_path_ok(""));
	CHECK(!jail_path_ok("/a//b"));
	CHECK(!jail_path_ok("/a/"));
	CHECK(!jail_path_ok("/a/./b"));
	CHECK(!jail_path_ok("/a/../b"));
	CHECK(!jail_path_ok("/.."));
	CHECK(jail_cap_by_name("dac_override") == 1);
	CHECK(jail_cap_by_name("cap_chown") == 0);
	CHECK(jail_cap_by_name("FOWNER") == 3);
	CHECK(jail_cap_by_name("nonsense") == -1);
}

/* Each of these is a usage error whose message contains the given text. */
static void check_error(const char *want, int rc)
{
	CHECK(rc == -1);
	if (!strstr(err, want))
		fprintf(stderr, "expected '%s' in '%s'\n", want, err);
	CHECK(strstr(err, want) != NULL);
}

static void test_errors(void)
{
	check_error("--root is required", parse("--uid", "1", "--gid", "1", "--", "/p", NULL));
	check_error("--uid and --gid are required", parse("--root", "/j", "--", "/p", NULL));
	check_error("--uid '0'",
		    parse("--root", "/j", "--uid", "0", "--gid", "1", "--", "/p", NULL));
	check_error("--gid '0'",
		    parse("--root", "/j", "--uid", "1", "--gid", "0", "--", "/p", NULL));
	check_error("--uid '-1'",
		    parse("--root", "/j", "--uid", "-1", "--gid", "1", "--", "/p", NULL));
	check_error("--uid '12x'",
		    parse("--root", "/j", "--uid", "12x", "--gid", "1", "--", "/p", NULL));
	check_error("--uid '4294967295'",
		    parse("--root", "/j", "--uid", "4294967295", "--gid", "1", "--", "/p", NULL));
	check_error("no PROGRAM", parse(BASE, NULL));
	check_error("no PROGRAM", parse(BASE, "--", NULL));
	check_error("must be an absolute path", parse(BASE, "--", "qemu", NULL));
	check_error("unexpected argument", parse(BASE, "/p", NULL));
	check_error("unknown option '--bogus'", parse(BASE, "--bogus", "1", "--", "/p", NULL));
	check_error("--ro needs a value", parse(BASE, "--ro", NULL));
	check_error("--root '/j/'",
		    parse("--root", "/j/", "--uid", "1", "--gid", "1", "--", "/p", NULL));
	check_error("--ro 'usr'", parse(BASE, "--ro", "usr", "--", "/p", NULL));
	check_error("--rw '/a/../etc'", parse(BASE, "--rw", "/a/../etc", "--", "/p", NULL));
	check_error("--dev '/'", parse(BASE, "--dev", "/", "--", "/p", NULL));
	check_error("expected LINK=TARGET", parse(BASE, "--symlink", "/lib", "--", "/p", NULL));
	check_error("TARGET not empty", parse(BASE, "--symlink", "/lib=", "--", "/p", NULL));
	check_error("LINK must be", parse(BASE, "--symlink", "lib=usr/lib", "--", "/p", NULL));
	check_error("--groups: bad group '0'", parse(BASE, "--groups", "5,0", "--", "/p", NULL));
	check_error("--groups: bad group ''", parse(BASE, "--groups", "5,", "--", "/p", NULL));
	CHECK(parse(BASE, "--groups", "", "--", "/p", NULL) == 0 && o.ngroups == 0);
	check_error("expected N:KIND:ARG", parse(BASE, "--fd", "5:ro", "--", "/p", NULL));
	check_error("bad fd number '4'", parse(BASE, "--fd", "4:ro:/x", "--", "/p", NULL));
	check_error("bad fd number '64'", parse(BASE, "--fd", "64:ro:/x", "--", "/p", NULL));
	check_error("unknown kind 'wo'", parse(BASE, "--fd", "5:wo:/x", "--", "/p", NULL));
	check_error("fd 5 given twice",
		    parse(BASE, "--fd", "5:ro:/x", "--fd", "5:rw:/y", "--", "/p", NULL));
	check_error("not an absolute normal path", parse(BASE, "--fd", "5:ro:x", "--", "/p", NULL));
	check_error("bad interface name",
		    parse(BASE, "--fd", "5:tap:abcdefghijklmnopq", "--", "/p", NULL));
	check_error("bad interface name", parse(BASE, "--fd", "5:tap:", "--", "/p", NULL));
	char longpath[200] = "/";
	memset(longpath + 1, 'a', 150);
	char spec[256];
	snprintf(spec, sizeof spec, "6:listen:%s", longpath);
	check_error("too long", parse(BASE, "--fd", spec, "--", "/p", NULL));
	check_error("also the --report fd",
		    parse(BASE, "--report", "5", "--fd", "5:ro:/x", "--", "/p", NULL));
	check_error("--nofile '0'", parse(BASE, "--nofile", "0", "--", "/p", NULL));
	check_error("unknown capability", parse(BASE, "--keep-cap", "all", "--", "/p", NULL));
	check_error("expected K=V", parse(BASE, "--env", "K", "--", "/p", NULL));
	check_error("expected K=V", parse(BASE, "--env", "=V", "--", "/p", NULL));
	check_error("--hostname ''", parse(BASE, "--hostname", "", "--", "/p", NULL));
	check_error("--report 'x'", parse(BASE, "--report", "x", "--", "/p", NULL));
	check_error("--cgroup 'pids'", parse(BASE, "--cgroup", "pids", "--", "/p", NULL));
	/* --report is known even when a later argument is wrong, so the error goes there. */
	CHECK(parse("--report", "7", "--uid", "0", NULL) == -1 && o.report == 7);
}

int main(void)
{
	test_minimal();
	test_everything();
	test_paths();
	test_errors();
	for (int i = 0; i < argc_copy; i++)
		free(argv_copy[i]);
	printf("opts_test: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
