/*
 * banned.h - force-included into every translation unit of tollgate.
 *
 * The standard headers come first so their own declarations precede the
 * poison; after that any use of an unbounded string routine is a compile
 * error.  Use snprintf, memcpy with explicit lengths, strtol/strtoull.
 */
#ifndef TG_BANNED_H
#define TG_BANNED_H

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#pragma GCC poison sprintf strcpy strcat strtok atoi gets

#endif
