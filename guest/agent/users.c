/* USER resolution: see users.h. */
#include "users.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* <linux/openat2.h>: struct open_how and RESOLVE_IN_ROOT. */
struct roost_open_how {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};
#define ROOST_RESOLVE_IN_ROOT 0x10
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* ------------------------------------------------------------------ */
/* users */

char *read_root_file(const char *root, const char *rel)
{
	int fd = -1;
	if (root) {
		int dfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return NULL;
		struct roost_open_how how = {.flags = O_RDONLY | O_CLOEXEC,
					     .resolve = ROOST_RESOLVE_IN_ROOT};
		fd = (int)syscall(SYS_openat2, dfd, rel, &how, sizeof how);
		if (fd < 0 && errno == ENOSYS)
			fd = openat(dfd, rel, O_RDONLY | O_CLOEXEC);
		int e = errno;
		close(dfd);
		errno = e;
	} else {
		char p[PATH_MAX];
		snprintf(p, sizeof p, "/%s", rel);
		fd = open(p, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)MAX_PASSWD_FILE) {
		close(fd);
		errno = EINVAL;
		return NULL;
	}
	size_t cap = (size_t)st.st_size;
	char *buf = malloc(cap + 1);
	if (!buf) {
		close(fd);
		errno = ENOMEM;
		return NULL;
	}
	size_t have = read_full(fd, buf, cap);
	close(fd);
	buf[have] = 0;
	return buf;
}

int parse_id(const char *s, uint32_t *res)
{
	size_t l = strlen(s);
	if (l == 0 || l > 10)
		return -1;
	uint64_t v = 0;
	for (size_t i = 0; i < l; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v >= 0xffffffffull)
		return -1;
	*res = (uint32_t)v;
	return 0;
}

/* Splits a mutable line at ':' into at most max fields. */
static int split_fields(char *line, char **f, int max)
{
	int n = 0;
	f[n++] = line;
	for (char *p = line; *p && n < max; p++) {
		if (*p == ':') {
			*p = 0;
			f[n++] = p + 1;
		}
	}
	return n;
}

/* Next line of a mutable buffer; *cur advances. NULL at the end. */
static char *next_line(char **cur)
{
	char *line = *cur;
	if (!line || !*line)
		return NULL;
	char *nl = strchr(line, '\n');
	if (nl) {
		*nl = 0;
		*cur = nl + 1;
	} else {
		*cur = line + strlen(line);
	}
	return line;
}

static void copy_str(char *dst, size_t size, const char *src)
{
	size_t l = strlen(src);
	if (l >= size)
		l = size - 1;
	memcpy(dst, src, l);
	dst[l] = 0;
}

bool passwd_lookup(char *buf, const char *name, uint32_t uid, struct user_info *u)
{
	char *cur = buf, *line;
	while ((line = next_line(&cur))) {
		char *f[7];
		int n = split_fields(line, f, 7);
		uint32_t pu, pg;
		if (n < 4 || f[0][0] == 0 || parse_id(f[2], &pu) < 0 || parse_id(f[3], &pg) < 0)
			continue;
		if (name ? strcmp(f[0], name) != 0 : pu != uid)
			continue;
		u->uid = pu;
		u->gid = pg;
		copy_str(u->name, sizeof u->name, f[0]);
		copy_str(u->home, sizeof u->home, n >= 6 && f[5][0] ? f[5] : "/");
		return true;
	}
	return false;
}

static void add_group(struct user_info *u, gid_t g)
{
	for (int i = 0; i < u->ngroups; i++)
		if (u->groups[i] == g)
			return;
	if (u->ngroups < MAX_GROUPS)
		u->groups[u->ngroups++] = g;
}

bool group_scan(char *buf, const char *group_name, gid_t *gid, const char *member, gid_t *supp,
		int *nsupp)
{
	bool found = false;
	char *cur = buf, *line;
	while ((line = next_line(&cur))) {
		char *f[4];
		int n = split_fields(line, f, 4);
		uint32_t g;
		if (n < 3 || f[0][0] == 0 || parse_id(f[2], &g) < 0)
			continue;
		if (group_name && !found && strcmp(f[0], group_name) == 0) {
			*gid = g;
			found = true;
		}
		if (member && n >= 4) {
			char *save = NULL;
			for (char *m = strtok_r(f[3], ",", &save); m;
			     m = strtok_r(NULL, ",", &save)) {
				if (strcmp(m, member) == 0 && *nsupp < MAX_GROUPS - 1) {
					supp[(*nsupp)++] = g;
					break;
				}
			}
		}
	}
	return found;
}

int resolve_user(const char *root, const char *spec, struct user_info *u, char *err, size_t errlen)
{
	char ubuf[512];
	if (strlen(spec) >= sizeof ubuf) {
		snprintf(err, errlen, "unknown user %.64s...", spec);
		return -1;
	}
	copy_str(ubuf, sizeof ubuf, spec);
	char *gpart = strchr(ubuf, ':');
	if (gpart)
		*gpart++ = 0;
	const char *upart = ubuf;

	memset(u, 0, sizeof *u);
	char *pw = read_root_file(root, "etc/passwd");
	uint32_t id;
	if (parse_id(upart, &id) == 0) {
		if (!pw || !passwd_lookup(pw, NULL, id, u)) {
			u->uid = id;
			u->gid = id;
			copy_str(u->home, sizeof u->home, id == 0 ? "/root" : "/");
		}
	} else if (!pw || !passwd_lookup(pw, upart, 0, u)) {
		free(pw);
		snprintf(err, errlen, "unknown user %s", upart);
		return -1;
	}
	free(pw);

	char *gr = read_root_file(root, "etc/group");
	gid_t supp[MAX_GROUPS];
	int nsupp = 0;
	if (gpart) {
		if (parse_id(gpart, &id) == 0) {
			u->gid = id;
		} else {
			gid_t g = 0;
			char *copy = gr ? strdup(gr) : NULL;
			bool found = copy && group_scan(copy, gpart, &g, NULL, NULL, NULL);
			free(copy);
			if (!found) {
				free(gr);
				snprintf(err, errlen, "unknown group %s", gpart);
				return -1;
			}
			u->gid = g;
		}
	}
	if (gr && u->name[0])
		group_scan(gr, NULL, NULL, u->name, supp, &nsupp);
	free(gr);
	u->ngroups = 0;
	add_group(u, u->gid);
	for (int i = 0; i < nsupp; i++)
		add_group(u, supp[i]);
	return 0;
}
