/* LTTng-UST provider for the side-by-side benchmark: the same event shapes drtrace's
 * benchmark records (one u64; an int and a string). */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER bench

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./bench_tp.h"

#if !defined(BENCH_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define BENCH_TP_H

#include <lttng/tracepoint.h>
#include <stdint.h>

LTTNG_UST_TRACEPOINT_EVENT(bench, u64,
    LTTNG_UST_TP_ARGS(uint64_t, v),
    LTTNG_UST_TP_FIELDS(lttng_ust_field_integer(uint64_t, v, v)))

LTTNG_UST_TRACEPOINT_EVENT(bench, int_string,
    LTTNG_UST_TP_ARGS(int32_t, n, const char *, s),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_integer(int32_t, n, n)
        lttng_ust_field_string(s, s)))

#endif

#include <lttng/tracepoint-event.h>
