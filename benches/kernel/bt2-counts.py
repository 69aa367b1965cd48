"""bt2-counts.py TRACE_DIR [TID...]: per CPU, the events and the discarded events babeltrace2
sees in a drtrace kernel trace (benches/run's cross-check of drtrace's loss accounting).

Prints one line per stream: `cpu events discarded own`, where `discarded` is the sum of the
counts of babeltrace2's discarded-events messages (the growth of the packets'
`events_discarded`) and `own` the events whose `common_pid` is one of the TIDs (the
tracer's own threads), all read by babeltrace2's own CTF reader (python3-bt2), not drtrace's.
"""
import collections
import sys

import bt2

tids = {int(t) for t in sys.argv[2:]}
events = collections.Counter()
discarded = collections.Counter()
own = collections.Counter()
cpu = {}
for msg in bt2.TraceCollectionMessageIterator(sys.argv[1]):
    kind = type(msg)
    if kind is bt2._EventMessageConst:
        event = msg.event
        stream = event.stream.addr
        events[stream] += 1
        if tids and int(event.payload_field["common_pid"]) in tids:
            own[stream] += 1
    elif kind is bt2._PacketBeginningMessageConst:
        cpu[msg.packet.stream.addr] = int(msg.packet.context_field["cpu_id"])
    elif kind is bt2._DiscardedEventsMessageConst:
        discarded[msg.stream.addr] += msg.count or 0
for stream in sorted(cpu, key=cpu.get):
    print(cpu[stream], events[stream], discarded[stream], own[stream])
