//! Property tests: random traces round-trip exactly, and no input (random, truncated or
//! mutated packets and metadata) makes the reader or the parser panic.

mod common;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use drtrace_ctf::metadata::Domain;
    use drtrace_ctf::reader::{Event, Trace, Value};
    use drtrace_ctf::record::FieldValue;
    use drtrace_ctf::tsdl;
    use drtrace_proto::event::FieldType;
    use proptest::prelude::*;

    use super::common::*;

    const UST: &str = "ust/uid/1000/64-bit";

    /// An event's name, clock value and payload.
    type Summary = (String, u64, Vec<(String, Value)>);

    /// One generated record.
    #[derive(Debug, Clone)]
    enum Rec {
        A { u: u8, i: i64, s: String },
        B { f: f64, b: Vec<u8>, flag: bool },
        C { v: u32 },
    }

    #[derive(Debug, Clone)]
    struct Step {
        rec: Rec,
        /// Cycles since the previous record; some cross 2^27 boundaries.
        delta: u64,
        /// Close the packet before this record.
        new_packet: bool,
    }

    fn rec() -> impl Strategy<Value = Rec> {
        prop_oneof![
            (any::<u8>(), any::<i64>(), "[a-zé ]{0,8}").prop_map(|(u, i, s)| Rec::A { u, i, s }),
            (
                -1e300f64..1e300,
                proptest::collection::vec(any::<u8>(), 0..12),
                any::<bool>()
            )
                .prop_map(|(f, b, flag)| Rec::B { f, b, flag }),
            any::<u32>().prop_map(|v| Rec::C { v }),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        let delta = prop_oneof![
            4 => 0u64..1000,
            1 => (1u64 << 26)..(1u64 << 29),
            1 => Just(0u64),
        ];
        (rec(), delta, proptest::bool::weighted(0.15)).prop_map(|(rec, delta, new_packet)| Step {
            rec,
            delta,
            new_packet,
        })
    }

    fn events_desc() -> Vec<(u32, u32, drtrace_proto::event::EventDescription)> {
        vec![
            (
                0,
                0,
                desc(
                    "g",
                    "a",
                    &[
                        ("u", FieldType::U8),
                        ("i", FieldType::I64),
                        ("s", FieldType::String),
                    ],
                ),
            ),
            (
                0,
                7,
                desc(
                    "g",
                    "b",
                    &[
                        ("f", FieldType::F64),
                        ("b", FieldType::Bytes),
                        ("flag", FieldType::Bool),
                    ],
                ),
            ),
            (0, 40, desc("g", "c", &[("v", FieldType::U32)])),
        ]
    }

    /// Writes the steps as a one-stream trace; returns the expected (name, cycles, fields).
    fn write_trace(
        session: &Path,
        start: u64,
        steps: &[Step],
    ) -> (TraceDir, Vec<u8>, Vec<Summary>) {
        let t = TraceDir::create(
            session,
            UST,
            Domain::Ust,
            1_000_000_000,
            &["channel0"],
            &events_desc(),
        );
        let mut s = t.stream(0, 0);
        let mut ts = start;
        let mut expected = Vec::new();
        s.begin_packet(ts);
        for st in steps {
            ts += st.delta;
            if st.new_packet {
                s.end_packet(ts, 0).begin_packet(ts);
            }
            let (id, name, fields) = match &st.rec {
                Rec::A { u, i, s } => (
                    0,
                    "g:a",
                    vec![FieldValue::U8(*u), FieldValue::I64(*i), FieldValue::Str(s)],
                ),
                Rec::B { f, b, flag } => (
                    7,
                    "g:b",
                    vec![
                        FieldValue::F64(*f),
                        FieldValue::Bytes(b),
                        FieldValue::Bool(*flag),
                    ],
                ),
                Rec::C { v } => (40, "g:c", vec![FieldValue::U32(*v)]),
            };
            s.record(id, ts, &fields);
            let values = match &st.rec {
                Rec::A { u, i, s } => vec![
                    ("u".to_owned(), Value::U64(u64::from(*u))),
                    ("i".to_owned(), Value::I64(*i)),
                    ("s".to_owned(), Value::Str(s.clone())),
                ],
                Rec::B { f, b, flag } => vec![
                    ("f".to_owned(), Value::F64(*f)),
                    ("b".to_owned(), Value::Bytes(b.clone())),
                    ("flag".to_owned(), Value::Bool(*flag)),
                ],
                Rec::C { v } => vec![("v".to_owned(), Value::U64(u64::from(*v)))],
            };
            expected.push((name.to_owned(), ts, values));
        }
        s.end_packet(ts, 0);
        let bytes = s.out.clone();
        t.write_stream("channel0_0", &s);
        (t, bytes, expected)
    }

    fn summary(e: &Event) -> Summary {
        (e.name.clone(), e.clock_cycles, e.fields.clone())
    }

    /// Reads everything, returning the events before the first error and whether one came.
    fn read(session: &Path) -> (Vec<Event>, bool) {
        let Ok(trace) = Trace::open(session) else {
            return (Vec::new(), true);
        };
        let mut events = Vec::new();
        for r in trace.events() {
            match r {
                Ok(e) => events.push(e),
                Err(e) => {
                    // Every error renders as a message with no panic.
                    assert!(!e.to_string().is_empty());
                    return (events, true);
                }
            }
        }
        (events, false)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn random_traces_round_trip(
            start in prop_oneof![0u64..1000, (1u64 << 40)..(1u64 << 41), Just((1u64 << 27) - 5)],
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            let session = tempfile::tempdir().unwrap();
            let (_t, _, expected) = write_trace(session.path(), start, &steps);
            let (events, failed) = read(session.path());
            prop_assert!(!failed);
            let got: Vec<_> = events.iter().map(summary).collect();
            prop_assert_eq!(got, expected);
        }

        /// A trace cut anywhere reads as a prefix of the whole trace, then at most one error.
        #[test]
        fn truncated_traces_read_a_prefix(
            steps in proptest::collection::vec(step(), 1..30),
            cut in any::<proptest::sample::Index>(),
        ) {
            let session = tempfile::tempdir().unwrap();
            let (t, bytes, expected) = write_trace(session.path(), 100, &steps);
            let len = cut.index(bytes.len());
            std::fs::write(t.dir.join("channel0_0"), &bytes[..len]).unwrap();
            let (events, _) = read(session.path());
            let got: Vec<_> = events.iter().map(summary).collect();
            prop_assert!(got.len() <= expected.len());
            prop_assert_eq!(&got[..], &expected[..got.len()]);
        }

        /// Random byte changes never panic the reader, whatever they hit.
        #[test]
        fn mutated_packets_never_panic(
            steps in proptest::collection::vec(step(), 1..20),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let session = tempfile::tempdir().unwrap();
            let (t, mut bytes, _) = write_trace(session.path(), 100, &steps);
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            std::fs::write(t.dir.join("channel0_0"), &bytes).unwrap();
            let _ = read(session.path());
            let _ = Trace::open(session.path()).and_then(|t| t.stream_stats());
        }

        /// Random bytes after a valid header (and plain random bytes) never panic the reader.
        #[test]
        fn random_stream_files_never_panic(
            with_header in any::<bool>(),
            noise in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let session = tempfile::tempdir().unwrap();
            let (t, bytes, _) = write_trace(session.path(), 100, &[]);
            let mut file = if with_header { bytes[..32].to_vec() } else { Vec::new() };
            file.extend_from_slice(&noise);
            std::fs::write(t.dir.join("channel0_0"), &file).unwrap();
            let _ = read(session.path());
        }

        /// Arbitrary text never panics the TSDL parser.
        #[test]
        fn random_metadata_text_never_panics(text in "\\PC{0,300}") {
            let _ = tsdl::parse(&text);
        }

        /// Token soup from TSDL's own vocabulary reaches deeper into the parser.
        #[test]
        fn tsdl_token_soup_never_panics(
            tokens in proptest::collection::vec(
                proptest::sample::select(vec![
                    "trace", "stream", "event", "env", "clock", "typealias", "typedef", "struct",
                    "variant", "enum", "integer", "floating_point", "string", "align", "{", "}",
                    "(", ")", "[", "]", ";", ",", ":", "=", ":=", ".", "<", ">", "...", "-",
                    "size", "8", "0x1f", "64", "x", "_y", "\"s\"", "uint8_t", "id", "le",
                    "map", "clock.c.value", "fields", "packet.header", "byte_order",
                ]),
                0..80,
            )
        ) {
            let text = format!(
                "typealias integer {{ size = 8; }} := uint8_t; trace {{ major = 1; }}; {}",
                tokens.join(" ")
            );
            let _ = tsdl::parse(&text);
        }

        /// Valid metadata with random edits never panics the parser, and whatever still
        /// parses never panics the reader on a valid stream.
        #[test]
        fn mutated_metadata_never_panics(
            edits in proptest::collection::vec(
                (any::<proptest::sample::Index>(), 0usize..6, "[ -~]{0,6}"),
                1..5,
            ),
        ) {
            let session = tempfile::tempdir().unwrap();
            let steps = vec![
                Step { rec: Rec::A { u: 1, i: -1, s: "x".into() }, delta: 1, new_packet: false },
                Step { rec: Rec::B { f: 0.5, b: vec![1, 2], flag: true }, delta: 1, new_packet: true },
                Step { rec: Rec::C { v: 9 }, delta: 1 << 27, new_packet: false },
            ];
            let (t, _, _) = write_trace(session.path(), 100, &steps);
            let path = t.dir.join("metadata");
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (at, delete, insert) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                let mut end = (i + delete).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(i..end, &insert);
            }
            std::fs::write(&path, &text).unwrap();
            let _ = tsdl::parse(&text);
            let _ = read(session.path());
        }
    }
}
