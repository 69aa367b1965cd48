/* An LD_PRELOAD shim for trace-cmd, for benches/run's kernel part only (the same approach
 * as consumer/benches/kernel.rs). trace-cmd record dies on this kind of machine opening the
 * function-tracer files (EPERM on writing /proc/sys/kernel/ftrace_enabled; see
 * shared/KERNEL.md); event tracing does not use them. The shim hands trace-cmd a scratch
 * file (SCRATCH, given at build time) instead of those files and changes nothing else.
 *
 *   gcc -shared -fPIC -O2 -o trace-cmd-shim.so trace-cmd-shim.c -DSCRATCH='"/tmp/x"' -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *blocked[] = {"set_ftrace_pid", "set_ftrace_filter", "set_ftrace_notrace",
                                "set_graph_function", "set_graph_notrace", "ftrace_enabled",
                                "stack_trace_filter", 0};

static const char *redirect(const char *p) {
    for (int i = 0; p && blocked[i]; i++)
        if (strstr(p, blocked[i]))
            return SCRATCH;
    return p;
}

#define WRAP_AT(name)                                                                          \
    int name(int d, const char *p, int f, ...) {                                               \
        static int (*real)(int, const char *, int, ...);                                       \
        if (!real)                                                                             \
            real = dlsym(RTLD_NEXT, #name);                                                    \
        va_list ap;                                                                            \
        va_start(ap, f);                                                                       \
        int m = va_arg(ap, int);                                                               \
        va_end(ap);                                                                            \
        return real(d, redirect(p), f, m);                                                     \
    }
#define WRAP(name)                                                                             \
    int name(const char *p, int f, ...) {                                                      \
        static int (*real)(const char *, int, ...);                                            \
        if (!real)                                                                             \
            real = dlsym(RTLD_NEXT, #name);                                                    \
        va_list ap;                                                                            \
        va_start(ap, f);                                                                       \
        int m = va_arg(ap, int);                                                               \
        va_end(ap);                                                                            \
        return real(redirect(p), f, m);                                                        \
    }
WRAP_AT(openat)
WRAP_AT(openat64)
WRAP(open)
WRAP(open64)
