/*
 * Tests of USER resolution (users.c): the passwd and group parsers on text,
 * then resolve_user against files in a temporary root; and the kernel
 * command line reader of util.c. Built with ASan/UBSan by `make test`.
 */
#include "users.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

/* The parsers modify their buffer: each call gets a fresh copy. */
static char *dup_text(const char *s)
{
	char *d = strdup(s);
	if (!d)
		abort();
	return d;
}

static const char PASSWD[] =
	"root:x:0:0:root:/root:/bin/sh\n"
	"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
	"# a comment is not an entry\n"
	"\n"
	"short:x:5\n"
	"badid:x:12a:7:bad:/home/badid:/bin/sh\n"
	"toobig:x:4294967295:7::/x:/bin/sh\n"
	":x:77:77::/nameless:/bin/sh\n"
	"nohome:x:1000:1000:no home::/bin/sh\n"
	"fourfields:x:1001:1002\n"
	"app:x:1000:1000:second entry for uid 1000:/srv/app:/bin/sh"; /* no final newline */

static void test_parse_id(void)
{
	uint32_t v = 99;
	CHECK(parse_id("0", &v) == 0 && v == 0);
	CHECK(parse_id("1000", &v) == 0 && v == 1000);
	CHECK(parse_id("4294967294", &v) == 0 && v == 4294967294u);
	CHECK(parse_id("4294967295", &v) < 0); /* (uid_t)-1 */
	CHECK(parse_id("99999999999", &v) < 0);
	CHECK(parse_id("", &v) < 0);
	CHECK(parse_id("-1", &v) < 0);
	CHECK(parse_id("12a", &v) < 0);
	CHECK(parse_id(" 1", &v) < 0);
}

static void test_passwd_by_name(void)
{
	struct user_info u;
	char *buf = dup_text(PASSWD);
	memset(&u, 0, sizeof u);
	CHECK(passwd_lookup(buf, "daemon", 0, &u));
	CHECK(u.uid == 1 && u.gid == 1);
	CHECK(strcmp(u.name, "daemon") == 0 && strcmp(u.home, "/usr/sbin") == 0);
	free(buf);

	/* An empty home field, and an entry with only four fields: home is "/". */
	buf = dup_text(PASSWD);
	CHECK(passwd_lookup(buf, "nohome", 0, &u) && u.uid == 1000 && strcmp(u.home, "/") == 0);
	free(buf);
	buf = dup_text(PASSWD);
	CHECK(passwd_lookup(buf, "fourfields", 0, &u) && u.uid == 1001 && u.gid == 1002);
	CHECK(strcmp(u.home, "/") == 0);
	free(buf);

	/* The last line has no newline. */
	buf = dup_text(PASSWD);
	CHECK(passwd_lookup(buf, "app", 0, &u) && strcmp(u.home, "/srv/app") == 0);
	free(buf);

	/* Malformed entries never match. */
	const char *bad[] = {"short", "badid",  "toobig",
			     "",      "nobody", "# a comment is not an entry"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		buf = dup_text(PASSWD);
		CHECK(!passwd_lookup(buf, bad[i], 0, &u));
		free(buf);
	}
}

static void test_passwd_by_uid(void)
{
	struct user_info u;
	char *buf = dup_text(PASSWD);
	memset(&u, 0, sizeof u);
	CHECK(passwd_lookup(buf, NULL, 0, &u) && strcmp(u.name, "root") == 0 &&
	      strcmp(u.home, "/root") == 0);
	free(buf);
	/* The first entry with the uid wins. */
	buf = dup_text(PASSWD);
	CHECK(passwd_lookup(buf, NULL, 1000, &u) && strcmp(u.name, "nohome") == 0);
	free(buf);
	/* A nameless entry is skipped. */
	buf = dup_text(PASSWD);
	CHECK(!passwd_lookup(buf, NULL, 77, &u));
	free(buf);
	buf = dup_text("");
	CHECK(!passwd_lookup(buf, NULL, 0, &u));
	free(buf);
}

static const char GROUP[] = "root:x:0:\n"
			    "wheel:x:10:root,app\n"
			    "users:x:100:app\n"
			    "bad:x:1x:app\n"
			    "nomembers:x:200\n"
			    "docker:x:999:other,app,more\n"
			    "wheel:x:11:app\n"; /* a duplicate name: the first one counts */

static void test_group_scan(void)
{
	gid_t gid = 0, supp[MAX_GROUPS];
	int nsupp = 0;
	char *buf = dup_text(GROUP);
	CHECK(group_scan(buf, "users", &gid, NULL, NULL, NULL) && gid == 100);
	free(buf);
	buf = dup_text(GROUP);
	CHECK(group_scan(buf, "wheel", &gid, NULL, NULL, NULL) && gid == 10);
	free(buf);
	buf = dup_text(GROUP);
	CHECK(!group_scan(buf, "bad", &gid, NULL, NULL, NULL));
	free(buf);
	buf = dup_text(GROUP);
	CHECK(group_scan(buf, "nomembers", &gid, NULL, NULL, NULL) && gid == 200);
	free(buf);

	/* Membership: every group listing the member, in file order. */
	buf = dup_text(GROUP);
	CHECK(!group_scan(buf, NULL, NULL, "app", supp, &nsupp));
	CHECK(nsupp == 4);
	CHECK(nsupp == 4 && supp[0] == 10 && supp[1] == 100 && supp[2] == 999 && supp[3] == 11);
	free(buf);

	/* Name and membership in one pass. */
	nsupp = 0;
	buf = dup_text(GROUP);
	CHECK(group_scan(buf, "docker", &gid, "root", supp, &nsupp) && gid == 999);
	CHECK(nsupp == 1 && supp[0] == 10);
	free(buf);

	/* The bound: at most MAX_GROUPS - 1 supplementary groups. */
	size_t cap = (size_t)(MAX_GROUPS + 10) * 32;
	char *many = malloc(cap);
	if (!many)
		abort();
	size_t off = 0;
	for (int i = 0; i < MAX_GROUPS + 10; i++)
		off += (size_t)snprintf(many + off, cap - off, "g%d:x:%d:app\n", i, 5000 + i);
	nsupp = 0;
	group_scan(many, NULL, NULL, "app", supp, &nsupp);
	CHECK(nsupp == MAX_GROUPS - 1);
	free(many);
}

/* ---- resolve_user against a temporary root ---- */

static char root[] = "/tmp/roost-users-test-XXXXXX";

static void put_file(const char *rel, const char *text)
{
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/%s", root, rel);
	FILE *f = fopen(p, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0)
		abort();
}

static void test_resolve_user(void)
{
	char etc[PATH_MAX], err[256];
	struct user_info u;
	if (!mkdtemp(root))
		abort();
	snprintf(etc, sizeof etc, "%s/etc", root);
	if (mkdir(etc, 0755) < 0)
		abort();

	/* Without passwd or group files: ids only. */
	CHECK(resolve_user(root, "0", &u, err, sizeof err) == 0);
	CHECK(u.uid == 0 && u.gid == 0 && strcmp(u.home, "/root") == 0 && u.name[0] == 0);
	CHECK(u.ngroups == 1 && u.groups[0] == 0);
	CHECK(resolve_user(root, "1234:55", &u, err, sizeof err) == 0);
	CHECK(u.uid == 1234 && u.gid == 55 && strcmp(u.home, "/") == 0);
	CHECK(resolve_user(root, "app", &u, err, sizeof err) < 0 &&
	      strcmp(err, "unknown user app") == 0);

	put_file("etc/passwd", PASSWD);
	put_file("etc/group", GROUP);

	CHECK(resolve_user(root, "app", &u, err, sizeof err) == 0);
	CHECK(u.uid == 1000 && u.gid == 1000 && strcmp(u.home, "/srv/app") == 0);
	/* Primary group first, then the groups listing "app" (wheel twice: once). */
	CHECK(u.ngroups == 5);
	CHECK(u.ngroups == 5 && u.groups[0] == 1000 && u.groups[1] == 10 && u.groups[2] == 100 &&
	      u.groups[3] == 999 && u.groups[4] == 11);

	/* A uid with an entry takes its name, and with it its groups. */
	CHECK(resolve_user(root, "0", &u, err, sizeof err) == 0);
	CHECK(strcmp(u.name, "root") == 0 && u.ngroups == 2 && u.groups[1] == 10);

	/* name:group and name:gid. */
	CHECK(resolve_user(root, "daemon:users", &u, err, sizeof err) == 0 && u.uid == 1 &&
	      u.gid == 100);
	CHECK(u.groups[0] == 100);
	CHECK(resolve_user(root, "daemon:4242", &u, err, sizeof err) == 0 && u.gid == 4242);
	CHECK(resolve_user(root, "daemon:nogroup", &u, err, sizeof err) < 0);
	CHECK(strcmp(err, "unknown group nogroup") == 0);
	CHECK(resolve_user(root, "nobody", &u, err, sizeof err) < 0 &&
	      strcmp(err, "unknown user nobody") == 0);

	/* A spec too long for the agent's buffer is refused, not truncated. */
	char longspec[600];
	memset(longspec, 'a', sizeof longspec - 1);
	longspec[sizeof longspec - 1] = 0;
	CHECK(resolve_user(root, longspec, &u, err, sizeof err) < 0 &&
	      strncmp(err, "unknown user ", 13) == 0);

	/* Symlinks resolve inside the root: an absolute link to /etc/passwd
	 * names the root's own file, not the host's. */
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/etc/passwd", root);
	CHECK(rename(p, (snprintf(etc, sizeof etc, "%s/etc/passwd.real", root), etc)) == 0);
	CHECK(symlink("/etc/passwd.real", p) == 0);
	CHECK(resolve_user(root, "app", &u, err, sizeof err) == 0 && u.uid == 1000);
	unlink(p);
	CHECK(symlink("../../../../../../../../etc/passwd.real", p) == 0);
	CHECK(resolve_user(root, "app", &u, err, sizeof err) == 0 && u.uid == 1000);

	/* Not a regular file: no passwd (a bare uid still works). */
	unlink(p);
	CHECK(mkdir(p, 0755) == 0);
	errno = 0;
	CHECK(read_root_file(root, "etc/passwd") == NULL && errno == EINVAL);
	CHECK(resolve_user(root, "app", &u, err, sizeof err) < 0);
	CHECK(resolve_user(root, "7", &u, err, sizeof err) == 0 && u.uid == 7);
	rmdir(p);
	errno = 0;
	CHECK(read_root_file(root, "etc/passwd") == NULL && errno == ENOENT);

	unlink(etc);
	snprintf(p, sizeof p, "%s/etc/group", root);
	unlink(p);
	snprintf(p, sizeof p, "%s/etc", root);
	rmdir(p);
	rmdir(root);
}

static void test_cmdline_get(void)
{
	const char *cl = "console=ttyS0 roost.port=roost.agent roost.root=\"/dev/vda\"  quiet\n"
			 "roost.empty= roost.poweroff=1 roost.rootx=no";
	char v[32];
	CHECK(cmdline_get(cl, "roost.port", v, sizeof v) && strcmp(v, "roost.agent") == 0);
	CHECK(cmdline_get(cl, "roost.root", v, sizeof v) && strcmp(v, "/dev/vda") == 0);
	CHECK(cmdline_get(cl, "roost.poweroff", v, sizeof v) && strcmp(v, "1") == 0);
	CHECK(cmdline_get(cl, "roost.rootx", v, sizeof v) && strcmp(v, "no") == 0);
	CHECK(!cmdline_get(cl, "roost.empty", v, sizeof v));
	CHECK(!cmdline_get(cl, "quiet", v, sizeof v));
	CHECK(!cmdline_get(cl, "roost", v, sizeof v));
	CHECK(!cmdline_get(cl, "roost.port", v, 5)); /* does not fit */
	CHECK(!cmdline_get("", "roost.port", v, sizeof v));
}

int main(void)
{
	test_parse_id();
	test_passwd_by_name();
	test_passwd_by_uid();
	test_group_scan();
	test_resolve_user();
	test_cmdline_get();
	printf("users_test: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
