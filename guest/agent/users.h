/*
 * USER of an EXEC or CALL: names and ids resolved through the command root's
 * /etc/passwd and /etc/group (no NSS: the image's own files, read with
 * symlinks resolved inside the root). The parsers work on a mutable copy of
 * a file's text and are pure; resolve_user reads the files.
 */
#ifndef ROOST_USERS_H
#define ROOST_USERS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MAX_GROUPS      64
#define MAX_PASSWD_FILE (4u << 20)

struct user_info {
	uid_t uid;
	gid_t gid;
	gid_t groups[MAX_GROUPS];
	int ngroups;
	char name[256]; /* empty if there is no passwd entry */
	char home[PATH_MAX];
};

/* A decimal id: 1..10 digits, value <= 0xfffffffe ((uid_t)-1 is not an id). 0 or -1. */
int parse_id(const char *s, uint32_t *res);
/* Finds a passwd entry by name (name != NULL) or by uid; fills uid, gid,
 * name and home ("/" when empty). buf is modified. */
bool passwd_lookup(char *buf, const char *name, uint32_t uid, struct user_info *u);
/* One pass over a group file: resolves group_name (if given) into *gid and
 * collects into supp the groups listing member (if given), at most
 * MAX_GROUPS - 1. True if group_name was found. buf is modified. */
bool group_scan(char *buf, const char *group_name, gid_t *gid, const char *member, gid_t *supp,
		int *nsupp);

/* Reads `rel` (e.g. "etc/passwd") below root (NULL: /), resolving symlinks
 * inside root. A NUL-terminated malloc'd buffer, or NULL with errno set
 * (ENOENT if missing, EINVAL if not a regular file or over MAX_PASSWD_FILE). */
char *read_root_file(const char *root, const char *rel);

/* USER: name, uid, uid:gid, name:group (and uid:group, name:gid), resolved
 * against the files below root (NULL: /). A bare uid without a passwd entry
 * gets gid = uid and home /root (uid 0) or /. The groups are the primary one
 * and those listing the user's name. 0, or -1 with a message for the host in err. */
int resolve_user(const char *root, const char *spec, struct user_info *u, char *err, size_t errlen);

#endif
