/*
 * The writer thread owns the file descriptor.  Producers append complete lines
 * to a ring of fixed-size slots under a mutex (the critical section is a
 * memcpy), so a slow disk can only ever cost a dropped line, never a stalled
 * event loop.
 */
#include "proxy/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 1024
#define RING_SLOTS 1024

struct slot {
    unsigned short len;
    char text[LINE_MAX_BYTES];
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool running;
    bool stopping;
    bool reopen;
    char *path;
    int fd;
    struct slot *ring;
    unsigned head, count;
    unsigned long dropped;
    unsigned long dropped_reported;
} L = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .fd = 2};

static atomic_int min_level = TG_LOG_INFO;

static const char *level_name(enum tg_log_level l)
{
    switch (l) {
    case TG_LOG_DEBUG: return "debug";
    case TG_LOG_INFO: return "info";
    case TG_LOG_WARN: return "warn";
    case TG_LOG_ERROR: return "error";
    }
    return "?";
}

int tg_log_level_parse(const char *s)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

void tg_log_set_level(enum tg_log_level level)
{
    atomic_store(&min_level, (int)level);
}

bool tg_log_enabled(enum tg_log_level level)
{
    return (int)level >= atomic_load(&min_level);
}

unsigned long tg_log_dropped(void)
{
    pthread_mutex_lock(&L.mu);
    unsigned long d = L.dropped;
    pthread_mutex_unlock(&L.mu);
    return d;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a log write error */
        }
        p += w;
        n -= (size_t)w;
    }
}

static int open_path(const char *path)
{
    if (!path)
        return 2;
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

static void *writer_main(void *arg)
{
    (void)arg;
    prctl(PR_SET_NAME, "tg-log", 0, 0, 0);
    struct slot *local = malloc(sizeof(struct slot) * 64);
    if (!local)
        return NULL;
    pthread_mutex_lock(&L.mu);
    for (;;) {
        while (L.count == 0 && !L.stopping && !L.reopen)
            pthread_cond_wait(&L.cv, &L.mu);
        if (L.reopen) {
            L.reopen = false;
            int fd = open_path(L.path);
            if (fd >= 0) {
                if (L.fd > 2)
                    close(L.fd);
                L.fd = fd;
            }
        }
        unsigned n = 0;
        while (L.count > 0 && n < 64) {
            local[n++] = L.ring[L.head];
            L.head = (L.head + 1) % RING_SLOTS;
            L.count--;
        }
        bool stop = L.stopping && L.count == 0 && n == 0;
        int fd = L.fd;
        unsigned long lost = L.dropped - L.dropped_reported;
        L.dropped_reported = L.dropped;
        pthread_mutex_unlock(&L.mu);
        if (stop)
            break;
        for (unsigned i = 0; i < n; i++)
            write_all(fd, local[i].text, local[i].len);
        if (lost) {
            char note[192];
            struct timeval tv;
            gettimeofday(&tv, NULL);
            struct tm tm;
            gmtime_r(&tv.tv_sec, &tm);
            int k = snprintf(note, sizeof(note),
                             "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ warn log: %lu line(s) dropped "
                             "because the log queue was full\n",
                             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                             tm.tm_sec, (long)(tv.tv_usec / 1000), lost);
            if (k > 0)
                write_all(fd, note, (size_t)k);
        }
        pthread_mutex_lock(&L.mu);
    }
    free(local);
    return NULL;
}

int tg_log_start(const char *path, enum tg_log_level level)
{
    tg_log_set_level(level);
    int fd = open_path(path);
    if (fd < 0)
        return -errno;
    L.ring = calloc(RING_SLOTS, sizeof(struct slot));
    if (!L.ring) {
        if (fd > 2)
            close(fd);
        return -ENOMEM;
    }
    L.path = path ? strdup(path) : NULL;
    L.fd = fd;
    L.head = L.count = 0;
    L.stopping = false;
    if (pthread_create(&L.thread, NULL, writer_main, NULL) != 0) {
        free(L.ring);
        L.ring = NULL;
        if (fd > 2)
            close(fd);
        L.fd = 2;
        return -EAGAIN;
    }
    L.running = true;
    return 0;
}

void tg_log_stop(void)
{
    if (!L.running)
        return;
    pthread_mutex_lock(&L.mu);
    L.stopping = true;
    pthread_cond_signal(&L.cv);
    pthread_mutex_unlock(&L.mu);
    pthread_join(L.thread, NULL);
    L.running = false;
    if (L.fd > 2)
        close(L.fd);
    L.fd = 2;
    free(L.ring);
    L.ring = NULL;
    free(L.path);
    L.path = NULL;
}

void tg_log_reopen(void)
{
    pthread_mutex_lock(&L.mu);
    L.reopen = true;
    pthread_cond_signal(&L.cv);
    pthread_mutex_unlock(&L.mu);
}

void tg_log(enum tg_log_level level, const char *module, const char *fmt, ...)
{
    if (!tg_log_enabled(level))
        return;
    char line[LINE_MAX_BYTES];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (long)(tv.tv_usec / 1000), level_name(level), module);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    /* A message must stay one line: control characters become '?'. */
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[len++] = '\n';

    pthread_mutex_lock(&L.mu);
    if (!L.running) {
        pthread_mutex_unlock(&L.mu);
        write_all(2, line, len);
        return;
    }
    if (L.count == RING_SLOTS) {
        L.dropped++;
        pthread_mutex_unlock(&L.mu);
        return;
    }
    struct slot *s = &L.ring[(L.head + L.count) % RING_SLOTS];
    memcpy(s->text, line, len);
    s->len = (unsigned short)len;
    L.count++;
    pthread_cond_signal(&L.cv);
    pthread_mutex_unlock(&L.mu);
}
