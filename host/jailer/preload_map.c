/* ROOST_JAIL_OPEN parsing: see preload_map.h. */
#include "preload_map.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

int jail_open_parse(char *spec, struct jail_open_entry *out, size_t max)
{
	size_t n = 0;
	for (char *line = spec; line && *line != '\0';) {
		char *nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		if (*line != '\0') {
			char *eq = strrchr(line, '=');
			if (!eq || line[0] != '/' || eq == line + 1 || eq[1] < '0' || eq[1] > '9')
				return -1;
			*eq = '\0';
			errno = 0;
			char *end;
			long fd = strtol(eq + 1, &end, 10);
			if (errno != 0 || *end != '\0' || fd < 0 || fd > INT_MAX || n == max)
				return -1;
			out[n].path = line;
			out[n++].fd = (int)fd;
		}
		line = nl ? nl + 1 : NULL;
	}
	return (int)n;
}

int jail_open_lookup(const struct jail_open_entry *map, size_t n, const char *path)
{
	if (!path)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(map[i].path, path) == 0)
			return map[i].fd;
	}
	return -1;
}
