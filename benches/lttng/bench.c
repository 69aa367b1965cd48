/* LTTng-UST side of the event-path benchmark: emits N events of one kind from T threads
 * and prints nanoseconds per event. Mirrors drtrace-tracebench (benches/tracebench):
 *   bench u64|int_string ITERATIONS THREADS [RATE]   wall ns / ITERATIONS; with RATE
 *                                                    (events/s over all threads) the writers
 *                                                    pace themselves, and the achieved rate
 *                                                    is printed too
 *   bench noop                                       exits at once (start-up timing) */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bench_tp.h"

static uint64_t iterations;
static int kind; /* 0 = u64, 1 = int+string */
static uint64_t per_thread_rate; /* 0 = as fast as possible */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void emit(uint64_t i)
{
    if (kind == 0)
        lttng_ust_tracepoint(bench, u64, i);
    else
        lttng_ust_tracepoint(bench, int_string, (int32_t)i, "hello, tracer");
}

/* Paced like drtrace-tracebench: a check about every 100 us of events, sleeping (never
 * spinning: on 2 CPUs the consumer needs the time) until the batch's due time. */
static void run_paced(void)
{
    uint64_t batch = per_thread_rate / 10000;
    if (batch == 0)
        batch = 1;
    uint64_t start = now_ns();
    uint64_t i = 0;
    while (i < iterations) {
        uint64_t end = i + batch < iterations ? i + batch : iterations;
        for (; i < end; i++)
            emit(i);
        uint64_t due = start + (uint64_t)((unsigned __int128)i * 1000000000u / per_thread_rate);
        if (now_ns() < due) {
            struct timespec ts = { .tv_sec = due / 1000000000u, .tv_nsec = due % 1000000000u };
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        }
    }
}

static void *run(void *arg)
{
    (void)arg;
    if (per_thread_rate) {
        run_paced();
        return NULL;
    }
    for (uint64_t i = 0; i < iterations; i++) {
        if (kind == 0)
            lttng_ust_tracepoint(bench, u64, i);
        else
            lttng_ust_tracepoint(bench, int_string, (int32_t)i, "hello, tracer");
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "noop") == 0)
        return 0;
    if (argc < 4) {
        fprintf(stderr, "usage: %s u64|int_string ITERATIONS THREADS [RATE] | noop\n", argv[0]);
        return 2;
    }
    kind = strcmp(argv[1], "u64") == 0 ? 0 : 1;
    iterations = strtoull(argv[2], NULL, 10);
    int threads = atoi(argv[3]);
    pthread_t tids[64];
    if (threads < 1 || threads > 64)
        return 2;
    uint64_t rate = argc >= 5 ? strtoull(argv[4], NULL, 10) : 0;
    per_thread_rate = rate / (uint64_t)threads;
    if (rate && !per_thread_rate)
        per_thread_rate = 1;
    uint64_t start = now_ns();
    for (int t = 0; t < threads; t++)
        pthread_create(&tids[t], NULL, run, NULL);
    for (int t = 0; t < threads; t++)
        pthread_join(tids[t], NULL);
    uint64_t elapsed = now_ns() - start;
    if (rate)
        printf("%.3f %.0f\n", (double)elapsed / (double)iterations,
               (double)iterations * threads * 1e9 / (double)elapsed);
    else
        printf("%.3f\n", (double)elapsed / (double)iterations);
    return 0;
}
