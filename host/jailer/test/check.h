/*
 * The agent's unit tests' one assertion macro: CHECK(cond) counts a pass or
 * prints the failed condition with its place and counts a failure. Each test
 * program prints the totals and exits non-zero when anything failed.
 */
#ifndef ROOST_TEST_CHECK_H
#define ROOST_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (cond) {                                                                        \
			passed++;                                                                  \
		} else {                                                                           \
			failed++;                                                                  \
			fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,       \
				__func__, #cond);                                                  \
		}                                                                                  \
	} while (0)

#endif
