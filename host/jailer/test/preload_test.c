/* Unit tests of ROOST_JAIL_OPEN parsing (preload_map.c). */
#include "check.h"
#include "preload_map.h"

#include <stdlib.h>
#include <string.h>

static struct jail_open_entry map[JAIL_OPEN_MAX];

static int parse(const char *spec)
{
	static char buf[4096];
	snprintf(buf, sizeof buf, "%s", spec);
	return jail_open_parse(buf, map, JAIL_OPEN_MAX);
}

int main(void)
{
	CHECK(parse("") == 0);
	CHECK(parse("/snap/ram=5") == 1);
	CHECK(strcmp(map[0].path, "/snap/ram") == 0 && map[0].fd == 5);
	CHECK(jail_open_lookup(map, 1, "/snap/ram") == 5);
	CHECK(jail_open_lookup(map, 1, "/snap/ram2") == -1);
	CHECK(jail_open_lookup(map, 1, "snap/ram") == -1);
	CHECK(jail_open_lookup(map, 1, NULL) == -1);
	CHECK(parse("/a=5\n/b=c=12\n\n/d=0\n") == 3);
	CHECK(strcmp(map[1].path, "/b=c") == 0 && map[1].fd == 12);
	CHECK(jail_open_lookup(map, 3, "/d") == 0);
	CHECK(jail_open_lookup(map, 3, "/b=c") == 12);
	CHECK(parse("/a") == -1);
	CHECK(parse("a=5") == -1);
	CHECK(parse("/a=") == -1);
	CHECK(parse("/a=-1") == -1);
	CHECK(parse("/a=5x") == -1);
	CHECK(parse("/a=99999999999") == -1);
	CHECK(parse("/=5") == -1);
	char many[4096] = "";
	for (int i = 0; i <= JAIL_OPEN_MAX; i++)
		snprintf(many + strlen(many), sizeof many - strlen(many), "/f%d=%d\n", i, i + 3);
	CHECK(parse(many) == -1);
	many[strlen(many) - strlen("/f32=35\n")] = '\0';
	CHECK(parse(many) == JAIL_OPEN_MAX);
	printf("preload_test: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
