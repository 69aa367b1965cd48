/* The start-up baseline for bench.c: the same program shape with no LTTng-UST linked in
 * (`bench noop` minus this is what liblttng-ust's constructors cost). */
#include <string.h>

int main(int argc, char **argv)
{
    return argc >= 2 && strcmp(argv[1], "noop") == 0 ? 0 : 2;
}
