#ifndef CEPOLL_H
#define CEPOLL_H
#include <stdint.h>

/// epoll, eventfd and accept4 for Swift: Glibc does not export them, and
/// struct epoll_event is packed on x86_64, so plain structs cross the border.

/// One ready descriptor: the epoll event bits and the caller's token.
typedef struct {
    uint32_t events;
    uint64_t token;
} cepoll_ready;

extern const uint32_t CEPOLL_IN;
extern const uint32_t CEPOLL_OUT;
extern const uint32_t CEPOLL_ERR;
extern const uint32_t CEPOLL_HUP;
extern const uint32_t CEPOLL_RDHUP;
extern const uint32_t CEPOLL_EXCLUSIVE;
extern const uint32_t CEPOLL_ET;

/// epoll_create1(EPOLL_CLOEXEC).
int cepoll_create(void);
/// Adds (op 1), modifies (op 3) or deletes (op 2) `fd` with `events` and `token`.
int cepoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t token);
/// Waits up to `timeout_ms`; fills at most `max` entries of `out`; returns the count or -1.
int cepoll_wait(int epfd, cepoll_ready *out, int max, int timeout_ms);
/// A non-blocking, close-on-exec eventfd.
int cepoll_eventfd(void);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int cepoll_accept(int fd);
/// accept4 with SOCK_CLOEXEC only: a blocking socket for a thread of its own.
int cepoll_accept_blocking(int fd);

#endif
