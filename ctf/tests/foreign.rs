//! Metadata drtrace's userspace generator does not write but the reader must read: what the
//! kernel converter will emit (signed integers of several sizes, character arrays, fixed
//! integer arrays, other byte orders) and LTTng's own metadata style.

mod common;

#[cfg(test)]
mod tests {
    use drtrace_ctf::metadata::{self, Domain, StreamInfo};
    use drtrace_ctf::reader::{Trace, Value};
    use drtrace_ctf::tsdl::{self, FieldClass};

    use super::common::*;

    const KERNEL_EVENT: &str = r#"
event {
	name = "sched_switch";
	id = 1;
	stream_id = 0;
	fields := struct {
		integer { size = 8; align = 8; signed = 0; encoding = UTF8; base = 10; } _prev_comm[16];
		integer { size = 32; align = 8; signed = 1; encoding = none; base = 10; } _prev_tid;
		integer { size = 8; align = 8; signed = 1; } _s8;
		integer { size = 16; align = 8; signed = 1; } _s16;
		integer { size = 64; align = 8; signed = 1; } _s64;
		integer { size = 64; align = 8; signed = 0; base = 16; } _args[3];
		integer { size = 16; align = 8; signed = 1; } _pair[2];
		integer { size = 32; align = 8; signed = 0; byte_order = be; } _be;
		integer { size = 4; align = 1; signed = 1; } _nib;
		integer { size = 4; align = 1; signed = 0; } _nib2;
	};
};
"#;

    fn kernel_payload() -> Vec<u8> {
        let mut p = Vec::new();
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        p.extend_from_slice(&comm);
        p.extend_from_slice(&(-5i32).to_le_bytes());
        p.extend_from_slice(&(-7i8).to_le_bytes());
        p.extend_from_slice(&(-300i16).to_le_bytes());
        p.extend_from_slice(&i64::MIN.to_le_bytes());
        for a in [1u64, 0xdead_beef, u64::MAX] {
            p.extend_from_slice(&a.to_le_bytes());
        }
        p.extend_from_slice(&(-1i16).to_le_bytes());
        p.extend_from_slice(&2i16.to_le_bytes());
        p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        // little-endian bit fields: low nibble -2 (0b1110), high nibble 9
        p.push(0b1001_1110);
        p
    }

    #[test]
    fn kernel_style_fields_read_back() {
        let session = tempfile::tempdir().unwrap();
        let info = trace_info(Domain::Kernel, "kernel", 1_000_000_000);
        let dir = session.path().join("kernel");
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = metadata::preamble(
            &info,
            &[StreamInfo {
                id: 0,
                channel: "channel0".into(),
            }],
        )
        .unwrap();
        text += KERNEL_EVENT;
        std::fs::write(dir.join("metadata"), text).unwrap();
        let mut s = StreamBuilder::new(info.uuid, 0, 1);
        let mut record = 1u32.to_le_bytes().to_vec(); // compact header, id 1, timestamp 0
        record.extend_from_slice(&kernel_payload());
        s.begin_packet(0).raw(&record, 0).end_packet(10, 0);
        std::fs::write(dir.join("channel0_1"), &s.out).unwrap();

        let events = Trace::open(session.path()).unwrap().read_all().unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.name, "sched_switch");
        assert_eq!(e.loglevel, None);
        let fields: Vec<(&str, &Value)> = e.fields.iter().map(|(n, v)| (n.as_str(), v)).collect();
        assert_eq!(
            fields,
            vec![
                ("prev_comm", &Value::Str("bash".into())),
                ("prev_tid", &Value::I64(-5)),
                ("s8", &Value::I64(-7)),
                ("s16", &Value::I64(-300)),
                ("s64", &Value::I64(i64::MIN)),
                (
                    "args",
                    &Value::Array(vec![
                        Value::U64(1),
                        Value::U64(0xdead_beef),
                        Value::U64(u64::MAX)
                    ])
                ),
                ("pair", &Value::Array(vec![Value::I64(-1), Value::I64(2)])),
                ("be", &Value::U64(0x0102_0304)),
                ("nib", &Value::I64(-2)),
                ("nib2", &Value::U64(9)),
            ]
        );

        let Some(bt) = babeltrace2() else { return };
        let (lines, stderr) = run_babeltrace2(&bt, session.path());
        assert_eq!(
            lines,
            [
                "[22:13:20.000000000] (+?.?????????) testhost sched_switch: { cpu_id = 1 }, { prev_comm = \"bash\", prev_tid = -5, s8 = -7, s16 = -300, s64 = -9223372036854775808, args = [ [0] = 0x1, [1] = 0xDEADBEEF, [2] = 0xFFFFFFFFFFFFFFFF ], pair = [ [0] = -1, [1] = 2 ], be = 16909060, nib = -2, nib2 = 9 }"
            ],
            "{stderr}"
        );
    }

    /// LTTng-UST's metadata style: aliases named with several words, `callsite` blocks,
    /// `unsigned long` discarded counters, LTTng's sequence naming, an event context.
    const LTTNG_UST: &str = r#"/* CTF 1.8 */

typealias integer { size = 8; align = 8; signed = false; } := uint8_t;
typealias integer { size = 16; align = 16; signed = false; } := uint16_t;
typealias integer { size = 32; align = 32; signed = false; } := uint32_t;
typealias integer { size = 64; align = 64; signed = false; } := uint64_t;
typealias integer { size = 64; align = 64; signed = false; } := unsigned long;
typealias integer { size = 5; align = 1; signed = false; } := uint5_t;
typealias integer { size = 27; align = 1; signed = false; } := uint27_t;

trace {
	major = 1;
	minor = 8;
	uuid = "4a7ea2d5-57e4-4c33-a5a1-6bbd0f8e6f53";
	byte_order = le;
	packet.header := struct {
		uint32_t magic;
		uint8_t  uuid[16];
		uint32_t stream_id;
		uint64_t stream_instance_id;
	};
};

env {
	hostname = "host";
	domain = "ust";
	tracer_name = "lttng-ust";
	tracer_major = 2;
	tracer_minor = 13;
};

clock {
	name = "monotonic";
	uuid = "8b0c2d2e-6b80-4c0a-a4a6-8b4f2a0b0c11";
	description = "Monotonic Clock";
	freq = 1000000000; /* Frequency, in Hz */
	/* clock value offset from Epoch is: offset * (1/freq) */
	offset = 1700000000000000000;
};

typealias integer {
	size = 27; align = 1; signed = false;
	map = clock.monotonic.value;
} := uint27_clock_monotonic_t;

typealias integer {
	size = 64; align = 8; signed = false;
	map = clock.monotonic.value;
} := uint64_clock_monotonic_t;

struct packet_context {
	uint64_clock_monotonic_t timestamp_begin;
	uint64_clock_monotonic_t timestamp_end;
	uint64_t content_size;
	uint64_t packet_size;
	uint64_t packet_seq_num;
	unsigned long events_discarded;
	uint32_t cpu_id;
};

struct event_header_compact {
	enum : uint5_t { compact = 0 ... 30, extended = 31 } id;
	variant <id> {
		struct {
			uint27_clock_monotonic_t timestamp;
		} compact;
		struct {
			uint32_t id;
			uint64_clock_monotonic_t timestamp;
		} extended;
	} v;
} align(8);

stream {
	id = 0;
	event.header := struct event_header_compact;
	packet.context := struct packet_context;
	event.context := struct {
		integer { size = 32; align = 8; signed = 1; encoding = none; base = 10; } _vtid;
	};
};

event {
	name = "ust_tests_hello:tptest";
	id = 0;
	stream_id = 0;
	loglevel = 13;
	model.emf.uri = "http://example.com/path";
	fields := struct {
		integer { size = 32; align = 8; signed = 1; encoding = none; base = 10; } _intfield;
		integer { size = 8; align = 8; signed = 0; encoding = UTF8; base = 10; } _arrfield2[10];
		integer { size = 64; align = 8; signed = 0; encoding = none; base = 10; } __seqfield1_length;
		integer { size = 8; align = 8; signed = 0; encoding = UTF8; base = 10; } _seqfield1[ __seqfield1_length ];
		string _stringfield;
		floating_point { exp_dig = 8; mant_dig = 24; align = 8; } _floatfield;
		enum : integer { size = 8; align = 8; signed = 0; } { VALUE1 = 0, VALUE2 = 1 ... 3 } _enumfield;
	};
};

callsite {
	name = "ust_tests_hello:tptest";
	func = "main";
	ip = 0x401234;
	file = "hello.c";
	line = 42;
};
"#;

    #[test]
    fn lttng_ust_style_metadata_parses() {
        let md = tsdl::parse(LTTNG_UST).unwrap();
        assert_eq!(md.env_str("tracer_name"), Some("lttng-ust"));
        let clock = md.clock("monotonic").unwrap();
        assert_eq!(clock.ns_from_origin(5), 1_700_000_000_000_000_005);
        let stream = &md.streams[&0];
        assert!(stream.event_context.is_some());
        let ev = &stream.events[&0];
        assert_eq!(ev.loglevel, Some(13));
        let Some(FieldClass::Struct(fields)) = &ev.fields else {
            panic!("fields are not a struct")
        };
        let names: Vec<(&str, bool)> = fields
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.hidden))
            .collect();
        assert_eq!(
            names,
            vec![
                ("_intfield", false),
                ("_arrfield2", false),
                ("__seqfield1_length", true),
                ("_seqfield1", false),
                ("_stringfield", false),
                ("_floatfield", false),
                ("_enumfield", false),
            ]
        );
        let Some(FieldClass::Struct(ctx)) = &stream.packet_context else {
            panic!()
        };
        assert!(
            matches!(&ctx.members[5].class, FieldClass::Int(i) if i.size == 64 && i.align == 64)
        );
    }

    #[test]
    fn lttng_ust_style_trace_reads_back() {
        let session = tempfile::tempdir().unwrap();
        let dir = session.path().join("ust/uid/1000/64-bit");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metadata"), LTTNG_UST).unwrap();
        let uuid = uuid::Uuid::parse_str("4a7ea2d5-57e4-4c33-a5a1-6bbd0f8e6f53").unwrap();
        let mut record = (7u32 << 5).to_le_bytes().to_vec(); // id 0, timestamp low bits 7
        record.extend_from_slice(&(-9i32).to_le_bytes()); // vtid context
        record.extend_from_slice(&42i32.to_le_bytes());
        record.extend_from_slice(b"test\0\0\0\0\0\0");
        record.extend_from_slice(&3u64.to_le_bytes());
        record.extend_from_slice(b"abc");
        record.extend_from_slice(b"str\0");
        record.extend_from_slice(&2.5f32.to_le_bytes());
        record.push(2);
        let mut s = StreamBuilder::new(uuid, 0, 0);
        s.begin_packet(0).raw(&record, 7).end_packet(8, 0);
        std::fs::write(dir.join("channel0_0"), &s.out).unwrap();

        let events = Trace::open(session.path()).unwrap().read_all().unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.timestamp_ns, 1_700_000_000_000_000_007);
        assert_eq!(e.domain(), "ust");
        assert_eq!(e.loglevel, Some(drtrace_proto::event::LogLevel::Debug));
        assert_eq!(e.context, vec![("vtid".to_owned(), Value::I64(-9))]);
        assert_eq!(
            e.fields,
            vec![
                ("intfield".to_owned(), Value::I64(42)),
                ("arrfield2".to_owned(), Value::Str("test".into())),
                ("seqfield1".to_owned(), Value::Str("abc".into())),
                ("stringfield".to_owned(), Value::Str("str".into())),
                ("floatfield".to_owned(), Value::F64(2.5)),
                (
                    "enumfield".to_owned(),
                    Value::Enum {
                        label: Some("VALUE2".into()),
                        value: 2
                    }
                ),
            ]
        );
        let line = drtrace_ctf::TextFormatter::new().format(e);
        assert_eq!(
            line,
            "[22:13:20.000000007] (+?.?????????) host ust_tests_hello:tptest: { cpu_id = 0 }, { vtid = -9 }, { intfield = 42, arrfield2 = \"test\", seqfield1 = \"abc\", stringfield = \"str\", floatfield = 2.5, enumfield = ( \"VALUE2\" : container = 2 ) }"
        );
    }
}
