/* Counts the heap allocations of a process it is preloaded into
 * (LD_PRELOAD): malloc, calloc, realloc, posix_memalign, aligned_alloc.
 * On SIGUSR2 it writes "<count>\n" to $CRADLE_MALLOC_COUNT_DIR/<pid>.
 * Used by tests/e2e_provided_alloc.rs to count the server's allocations
 * per provided call. Built by that test with `cc -shared -fPIC`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static unsigned long count;
static char dir[512];

/* dlsym itself may call calloc before the real one is known: serve it from
 * a static buffer, never freed. */
static char boot[4096];
static size_t boot_used;

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

static void counted(void) { __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED); }

void *malloc(size_t n) {
    if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
    counted();
    return real_malloc(n);
}

void *calloc(size_t a, size_t b) {
    if (!real_calloc) {
        static int resolving;
        if (resolving) {
            size_t n = (a * b + 15) & ~(size_t)15;
            if (boot_used + n > sizeof boot) return NULL;
            void *p = boot + boot_used;
            boot_used += n;
            return p;
        }
        resolving = 1;
        real_calloc = dlsym(RTLD_NEXT, "calloc");
        resolving = 0;
    }
    counted();
    return real_calloc(a, b);
}

void *realloc(void *p, size_t n) {
    if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc");
    counted();
    return real_realloc(p, n);
}

void free(void *p) {
    if ((char *)p >= boot && (char *)p < boot + sizeof boot) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}

int posix_memalign(void **p, size_t a, size_t n) {
    if (!real_posix_memalign) real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    counted();
    return real_posix_memalign(p, a, n);
}

void *aligned_alloc(size_t a, size_t n) {
    if (!real_aligned_alloc) real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    counted();
    return real_aligned_alloc(a, n);
}

static void dump(int sig) {
    (void)sig;
    char path[600], line[32];
    snprintf(path, sizeof path, "%s/%d", dir, (int)getpid());
    int n = snprintf(line, sizeof line, "%lu\n", __atomic_load_n(&count, __ATOMIC_RELAXED));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        if (write(fd, line, n) < 0) {}
        close(fd);
    }
}

__attribute__((constructor)) static void init(void) {
    const char *d = getenv("CRADLE_MALLOC_COUNT_DIR");
    snprintf(dir, sizeof dir, "%s", d ? d : "/tmp");
    signal(SIGUSR2, dump);
}
