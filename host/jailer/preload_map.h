/*
 * The path-to-fd map of roost-jail-preload.so, from ROOST_JAIL_OPEN: one or
 * more `PATH=FD` entries separated by newlines (PATH absolute; it may hold
 * '=', the last one separates). Parsed once; unit-tested in
 * test/preload_test.c.
 */
#ifndef ROOST_JAIL_PRELOAD_MAP_H
#define ROOST_JAIL_PRELOAD_MAP_H

#include <stddef.h>

#define JAIL_OPEN_MAX 32

struct jail_open_entry {
	const char *path;
	int fd;
};

/*
 * Parses spec (modified in place: the entries point into it) into at most
 * max entries. Empty lines are skipped. Returns the number of entries, or -1
 * for a malformed spec (a line without '=', a relative path, a bad fd, too
 * many entries).
 */
int jail_open_parse(char *spec, struct jail_open_entry *out, size_t max);

/* The fd mapped to path, or -1. */
int jail_open_lookup(const struct jail_open_entry *map, size_t n, const char *path);

#endif
