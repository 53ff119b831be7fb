#ifndef CZOOKEEPER_SHIM_H
#define CZOOKEEPER_SHIM_H
/* The synchronous API (zoo_create, zoo_exists, ...) is declared only with THREADED: the _mt library. */
#define THREADED 1
#include <zookeeper/zookeeper.h>

/* ZOO_OPEN_ACL_UNSAFE is a mutable C global, which Swift 6 will not touch: a pointer to it. */
static inline struct ACL_vector *czookeeper_open_acl(void) { return &ZOO_OPEN_ACL_UNSAFE; }
#endif
