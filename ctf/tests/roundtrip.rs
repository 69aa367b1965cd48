//! Round trips: records encoded per docs/format.md, written as packets, read back with the
//! reader, field by field and timestamp by timestamp.

mod common;

#[cfg(test)]
mod tests {
    use drtrace_ctf::metadata::Domain;
    use drtrace_ctf::reader::{DecodeError, ReadError, Trace, Value};
    use drtrace_ctf::record::{FieldValue, HeaderKind};
    use drtrace_ctf::text::TextFormatter;
    use drtrace_proto::event::{FieldType, LogLevel};

    use super::common::*;

    const UST: &str = "ust/uid/1000/64-bit";
    const NS: u64 = 1_000_000_000;

    fn all_types() -> Vec<(&'static str, FieldType)> {
        vec![
            ("u8", FieldType::U8),
            ("u16", FieldType::U16),
            ("u32", FieldType::U32),
            ("u64", FieldType::U64),
            ("i8", FieldType::I8),
            ("i16", FieldType::I16),
            ("i32", FieldType::I32),
            ("i64", FieldType::I64),
            ("f32", FieldType::F32),
            ("f64", FieldType::F64),
            ("yes", FieldType::Bool),
            ("no", FieldType::Bool),
            ("s", FieldType::String),
            ("empty", FieldType::String),
            ("b", FieldType::Bytes),
            ("none", FieldType::Bytes),
            // TSDL keywords as field names
            ("align", FieldType::U8),
            ("struct", FieldType::U8),
            ("event", FieldType::U8),
        ]
    }

    #[test]
    fn every_field_type_round_trips() {
        let session = tempfile::tempdir().unwrap();
        let t = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0"],
            &[(0, 0, desc("demo", "all", &all_types()))],
        );
        let mut s = t.stream(0, 0);
        s.begin_packet(100)
            .record(
                0,
                150,
                &[
                    FieldValue::U8(u8::MAX),
                    FieldValue::U16(u16::MAX),
                    FieldValue::U32(u32::MAX),
                    FieldValue::U64(u64::MAX),
                    FieldValue::I8(i8::MIN),
                    FieldValue::I16(i16::MIN),
                    FieldValue::I32(i32::MIN),
                    FieldValue::I64(i64::MIN),
                    FieldValue::F32(1.25),
                    FieldValue::F64(-0.1),
                    FieldValue::Bool(true),
                    FieldValue::Bool(false),
                    FieldValue::Str("héllo"),
                    FieldValue::Str(""),
                    FieldValue::Bytes(&[0, 1, 255]),
                    FieldValue::Bytes(&[]),
                    FieldValue::U8(1),
                    FieldValue::U8(2),
                    FieldValue::U8(3),
                ],
            )
            .end_packet(200, 0);
        t.write_stream("channel0_0", &s);

        let events = Trace::open(session.path()).unwrap().read_all().unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        let expected = vec![
            ("u8", Value::U64(255)),
            ("u16", Value::U64(65535)),
            ("u32", Value::U64(u64::from(u32::MAX))),
            ("u64", Value::U64(u64::MAX)),
            ("i8", Value::I64(-128)),
            ("i16", Value::I64(-32768)),
            ("i32", Value::I64(i64::from(i32::MIN))),
            ("i64", Value::I64(i64::MIN)),
            ("f32", Value::F64(1.25)),
            ("f64", Value::F64(-0.1)),
            ("yes", Value::Bool(true)),
            ("no", Value::Bool(false)),
            ("s", Value::Str("héllo".into())),
            ("empty", Value::Str(String::new())),
            ("b", Value::Bytes(vec![0, 1, 255])),
            ("none", Value::Bytes(vec![])),
            ("align", Value::U64(1)),
            ("struct", Value::U64(2)),
            ("event", Value::U64(3)),
        ];
        let got: Vec<(&str, Value)> = e
            .fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(e.name, "demo:all");
        assert_eq!(e.loglevel, Some(LogLevel::Info));
        assert_eq!(e.clock_cycles, 150);
        assert_eq!(e.timestamp_ns, MONO_TO_REALTIME_NS + 150);
        assert_eq!(e.cpu, Some(0));
        assert_eq!(e.channel, "channel0");
        assert_eq!(e.stream_id, 0);
        assert_eq!(e.domain(), "ust");
        assert_eq!(e.trace.path, session.path().join(UST));
        assert!(e.context.is_empty());
    }

    #[test]
    fn compact_and_extended_headers_and_27_bit_wraparound() {
        let session = tempfile::tempdir().unwrap();
        let empty = |n: &str| desc("p", n, &[]);
        let t = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0"],
            &[
                (0, 0, desc("p", "zero", &[("v", FieldType::U32)])),
                (0, 3, empty("three")),
                (0, 30, empty("thirty")),
                (0, 31, empty("thirtyone")),
                (0, 1000, empty("thousand")),
                (0, u32::MAX, empty("max")),
            ],
        );
        let base = 5u64 << 27;
        let near_wrap = (6u64 << 27) + 0x7ff_ff00;
        let after_wrap = (7u64 << 27) + 5;
        // A compact header across a 2^27 boundary, which the format's rule still reads right
        // (writers use the extended header there, but the rule is what readers must apply).
        let wrapped_compact = (u32::try_from(after_wrap & 0x7ff_ffff).unwrap() << 5).to_le_bytes();
        let mut s = t.stream(0, 1);
        s.begin_packet(base - 100)
            .record(3, base - 90, &[]) // compact from timestamp_begin
            .record(3, base + 5, &[]) // crosses a boundary: extended
            .record(31, base + 6, &[]) // id 31 never fits: extended
            .record(30, base + 7, &[]) // compact
            .record(1000, (6 << 27) + 1, &[]) // extended
            .record(0, (6 << 27) + 2, &[FieldValue::U32(1)]) // compact
            .record(0, near_wrap, &[FieldValue::U32(2)]) // compact, same high bits
            .raw(&wrapped_compact, after_wrap)
            .raw(&3u32.to_le_bytes(), after_wrap) // payload of the raw record
            .record(u32::MAX, after_wrap + 1, &[])
            .end_packet(after_wrap + 2, 0);
        // The next packet's first compact record is rebuilt from its own timestamp_begin.
        let begin2 = (9u64 << 27) + 1;
        s.begin_packet(begin2)
            .record(3, begin2 + 50, &[])
            .end_packet(begin2 + 60, 0);
        t.write_stream("channel0_1", &s);
        use HeaderKind::{Compact, Extended};
        assert_eq!(
            s.kinds,
            vec![
                Compact, Extended, Extended, Compact, Extended, Compact, Compact, Extended, Compact
            ]
        );

        let events = Trace::open(session.path()).unwrap().read_all().unwrap();
        let got: Vec<(&str, u64)> = events
            .iter()
            .map(|e| (e.name.as_str(), e.clock_cycles))
            .collect();
        assert_eq!(
            got,
            vec![
                ("p:three", base - 90),
                ("p:three", base + 5),
                ("p:thirtyone", base + 6),
                ("p:thirty", base + 7),
                ("p:thousand", (6 << 27) + 1),
                ("p:zero", (6 << 27) + 2),
                ("p:zero", near_wrap),
                ("p:zero", after_wrap),
                ("p:max", after_wrap + 1),
                ("p:three", begin2 + 50),
            ]
        );
        assert_eq!(events[7].field("v"), Some(&Value::U64(3)));
        assert!(events.iter().all(|e| e.cpu == Some(1)));
        for e in &events {
            assert_eq!(
                e.timestamp_ns,
                MONO_TO_REALTIME_NS + i64::try_from(e.clock_cycles).unwrap()
            );
        }
    }

    #[test]
    fn discarded_events_and_lost_packets_are_reported() {
        let session = tempfile::tempdir().unwrap();
        let t = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0"],
            &[(0, 0, desc("p", "e", &[]))],
        );
        let mut s = t.stream(0, 0);
        s.begin_packet(10).record(0, 11, &[]).end_packet(12, 0);
        s.begin_packet(20)
            .record(0, 21, &[])
            .record(0, 22, &[])
            .end_packet(23, 3);
        s.lose_packets(2);
        s.begin_packet(40).record(0, 41, &[]).end_packet(42, 0);
        s.begin_packet(50).end_packet(51, 2); // empty packet, still counted
        t.write_stream("channel0_0", &s);

        let trace = Trace::open(session.path()).unwrap();
        let stats = trace.stream_stats().unwrap();
        assert_eq!(stats.len(), 1);
        let st = &stats[0];
        assert_eq!(st.packets, 4);
        assert_eq!(st.events, 4);
        assert_eq!(st.events_discarded, 5);
        let counts: Vec<(u64, Option<u64>)> = st
            .discarded
            .iter()
            .map(|d| (d.count, d.packet_seq_num))
            .collect();
        assert_eq!(counts, vec![(3, Some(1)), (2, Some(5))]);
        assert_eq!(st.lost_packets.len(), 1);
        assert_eq!(
            (st.lost_packets[0].expected, st.lost_packets[0].found),
            (2, 4)
        );
        assert_eq!(st.lost_packets[0].lost(), 2);
        assert_eq!(st.channel, "channel0");
        assert_eq!(st.cpu, Some(0));
        // recorded + discarded = emitted
        assert_eq!(st.events + st.events_discarded, 9);

        // The merged iterator gathers the same numbers.
        let mut events = trace.events();
        assert_eq!(events.by_ref().count(), 4);
        assert_eq!(events.stats(), stats);
    }

    #[test]
    fn streams_and_traces_merge_in_time_order() {
        let session = tempfile::tempdir().unwrap();
        let ust = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0", "my_chan"],
            &[
                (0, 0, desc("u", "a", &[("n", FieldType::U32)])),
                (1, 0, desc("u", "b", &[])),
            ],
        );
        // 2 GHz: kernel cycle c is at c / 2 ns
        let kernel = TraceDir::create(
            session.path(),
            "kernel",
            Domain::Kernel,
            2 * NS,
            &["channel0"],
            &[(0, 7, desc("k", "sched", &[("cpu", FieldType::U32)]))],
        );
        let mut c0 = ust.stream(0, 0);
        c0.begin_packet(0)
            .record(0, 100, &[FieldValue::U32(0)])
            .record(0, 400, &[FieldValue::U32(3)])
            .end_packet(450, 0)
            .begin_packet(500)
            .record(0, 700, &[FieldValue::U32(5)])
            .end_packet(800, 0);
        ust.write_stream("channel0_0", &c0);
        let mut c1 = ust.stream(0, 1);
        c1.begin_packet(0)
            .record(0, 300, &[FieldValue::U32(2)])
            .end_packet(310, 0);
        ust.write_stream("channel0_1", &c1);
        let mut m = ust.stream(1, 0);
        m.begin_packet(0).record(0, 650, &[]).end_packet(660, 0);
        ust.write_stream("my_chan_0", &m);
        let mut k = kernel.stream(0, 3);
        k.begin_packet(0)
            .record(7, 400, &[FieldValue::U32(3)]) // 200 ns
            .record(7, 1000, &[FieldValue::U32(3)]) // 500 ns
            .end_packet(2000, 0);
        kernel.write_stream("channel0_3", &k);

        let trace = Trace::open(session.path()).unwrap();
        assert_eq!(trace.sources().len(), 2);
        let events = trace.read_all().unwrap();
        let got: Vec<(String, i64, &str, Option<u32>, &str)> = events
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.timestamp_ns - MONO_TO_REALTIME_NS,
                    e.channel.as_str(),
                    e.cpu,
                    e.domain(),
                )
            })
            .collect();
        let expect = |n: &str, t, c, cpu, d| (n.to_owned(), t, c, Some(cpu), d);
        assert_eq!(
            got,
            vec![
                expect("u:a", 100, "channel0", 0, "ust"),
                expect("k:sched", 200, "channel0", 3, "kernel"),
                expect("u:a", 300, "channel0", 1, "ust"),
                expect("u:a", 400, "channel0", 0, "ust"),
                expect("k:sched", 500, "channel0", 3, "kernel"),
                expect("u:b", 650, "my_chan", 0, "ust"),
                expect("u:a", 700, "channel0", 0, "ust"),
            ]
        );
        assert_eq!(events[1].clock_cycles, 400);
        assert_eq!(events[5].stream_id, 1);
    }

    /// Hundreds of CPUs times several channels: the merge must not keep a file descriptor
    /// per stream open, or it would hit the process's limit.
    #[test]
    fn merging_many_streams_keeps_few_files_open() {
        let session = tempfile::tempdir().unwrap();
        let t = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0"],
            &[(0, 0, desc("p", "e", &[]))],
        );
        let streams = 300u32;
        for cpu in 0..streams {
            let mut s = t.stream(0, cpu);
            s.begin_packet(0)
                .record(0, u64::from(cpu), &[])
                .record(0, 1000 + u64::from(cpu), &[])
                .end_packet(2000, 0);
            t.write_stream(&format!("channel0_{cpu}"), &s);
        }
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let before = open_fds();
        let trace = Trace::open(session.path()).unwrap();
        let mut events = trace.events();
        let first = events.next().unwrap().unwrap();
        assert_eq!(first.cpu, Some(0));
        // Every stream has been read from by now; other tests may hold a few files open.
        let during = open_fds();
        assert!(
            during < before + 100,
            "{during} fds open while merging (was {before})"
        );
        let rest: Vec<_> = events.map(Result::unwrap).collect();
        assert_eq!(rest.len(), 2 * streams as usize - 1);
        assert!(
            rest.windows(2)
                .all(|w| w[0].timestamp_ns <= w[1].timestamp_ns)
        );
    }

    #[test]
    fn session_layouts_are_discovered() {
        let session = tempfile::tempdir().unwrap();
        let pid_dir = "ust/pid/app-42-20231114-221320";
        let e = || vec![(0, 0, desc("p", "e", &[]))];
        let a = TraceDir::create(session.path(), UST, Domain::Ust, NS, &["c"], &e());
        let b = TraceDir::create(session.path(), pid_dir, Domain::Ust, NS, &["c"], &e());
        let k = TraceDir::create(session.path(), "kernel", Domain::Kernel, NS, &["c"], &e());
        for (i, t) in [&a, &b, &k].into_iter().enumerate() {
            let mut s = t.stream(0, 0);
            let ts = 10 * (i as u64 + 1);
            s.begin_packet(0).record(0, ts, &[]).end_packet(ts + 1, 0);
            t.write_stream("c_0", &s);
        }
        // Not stream files: hidden files, subdirectories, an empty stream file.
        std::fs::write(a.dir.join(".lock"), b"x").unwrap();
        std::fs::create_dir(a.dir.join("index")).unwrap();
        std::fs::write(k.dir.join("c_1"), b"").unwrap();

        let trace = Trace::open(session.path()).unwrap();
        let dirs: Vec<_> = trace.sources().iter().map(|s| s.path.clone()).collect();
        assert_eq!(
            dirs,
            vec![
                session.path().join("kernel"),
                session.path().join(pid_dir),
                session.path().join(UST),
            ]
        );
        assert_eq!(trace.stream_paths().count(), 4);
        let events = trace.read_all().unwrap();
        let origin: Vec<_> = events.iter().map(|e| e.trace.path.clone()).collect();
        assert_eq!(
            origin,
            vec![
                session.path().join(UST),
                session.path().join(pid_dir),
                session.path().join("kernel")
            ]
        );
        let pid_trace = &events[1].trace;
        assert_eq!(pid_trace.metadata.env_str("procname"), Some("app"));
        assert_eq!(pid_trace.metadata.env_str("tracer_name"), Some("drtrace"));
        assert_eq!(events[2].domain(), "kernel");

        // A trace directory opens on its own too, and so does its metadata file.
        assert_eq!(
            Trace::open(session.path().join("kernel"))
                .unwrap()
                .read_all()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            Trace::open(k.dir.join("metadata")).unwrap().sources().len(),
            1
        );
        let empty = tempfile::tempdir().unwrap();
        let err = Trace::open(empty.path()).unwrap_err();
        assert!(matches!(err, ReadError::NoMetadata { .. }), "{err}");
        assert!(err.to_string().starts_with("no metadata file under "));
        assert!(matches!(
            Trace::open(empty.path().join("nope")),
            Err(ReadError::Io { .. })
        ));
    }

    /// A trace with one good stream and one stream made by `bad`; returns the error the bad
    /// stream gives, after checking the good stream's events still come through.
    fn bad_stream_error(bad: impl FnOnce(&TraceDir) -> Vec<u8>) -> (ReadError, std::path::PathBuf) {
        let session = tempfile::tempdir().unwrap();
        let t = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0"],
            &[(
                0,
                0,
                desc(
                    "p",
                    "e",
                    &[("s", FieldType::String), ("b", FieldType::Bytes)],
                ),
            )],
        );
        let mut good = t.stream(0, 0);
        good.begin_packet(0)
            .record(0, 5, &[FieldValue::Str("ok"), FieldValue::Bytes(&[1])])
            .end_packet(6, 0);
        t.write_stream("channel0_0", &good);
        let bad_path = t.dir.join("channel0_1");
        std::fs::write(&bad_path, bad(&t)).unwrap();

        let trace = Trace::open(session.path()).unwrap();
        let results: Vec<_> = trace.events().collect();
        let oks: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|e| e.cpu == Some(0))
            .collect();
        assert_eq!(oks.len(), 1, "the good stream must still be read");
        assert_eq!(oks[0].field("s"), Some(&Value::Str("ok".into())));
        let mut errs: Vec<_> = results.into_iter().filter_map(Result::err).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let err = errs.remove(0);
        // read_all stops at the error
        assert!(trace.read_all().is_err());
        (err, bad_path)
    }

    fn one_packet(t: &TraceDir, fill: impl FnOnce(&mut StreamBuilder)) -> Vec<u8> {
        let mut s = t.stream(0, 1);
        s.begin_packet(0);
        fill(&mut s);
        s.end_packet(100, 0);
        s.out
    }

    fn decode_error(err: &ReadError, path: &std::path::Path) -> (u64, DecodeError) {
        match err {
            ReadError::Decode {
                path: p,
                offset,
                source,
            } => {
                assert_eq!(p, path);
                assert!(
                    err.to_string().contains(&format!("at byte {offset}: ")),
                    "{err}"
                );
                (*offset, source.clone())
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_event_ids_are_errors() {
        let (err, path) = bad_stream_error(|t| {
            one_packet(t, |s| {
                s.record(9, 10, &[]);
            })
        });
        let (offset, e) = decode_error(&err, &path);
        assert_eq!(e, DecodeError::UnknownEvent { stream: 0, id: 9 });
        assert_eq!(offset, 84 + 4); // after the record's compact header
        assert!(
            err.to_string()
                .ends_with("unknown event id 9 in stream class 0")
        );
    }

    #[test]
    fn bad_magic_and_foreign_uuid_are_errors() {
        let (err, path) = bad_stream_error(|t| {
            let mut b = one_packet(t, |_| {});
            b[0] ^= 0xff;
            b
        });
        let (offset, e) = decode_error(&err, &path);
        assert_eq!(offset, 0);
        assert!(
            matches!(e, DecodeError::BadMagic { found: 0xc1fc_1f3e }),
            "{e:?}"
        );

        let (err, path) = bad_stream_error(|_| {
            let mut s = StreamBuilder::new(uuid::Uuid::from_u128(99), 0, 1);
            s.begin_packet(0).end_packet(1, 0);
            s.out
        });
        assert!(matches!(
            decode_error(&err, &path).1,
            DecodeError::UuidMismatch { .. }
        ));
    }

    #[test]
    fn truncated_and_lying_packets_are_errors() {
        // cut in the middle of the second packet
        let (err, path) = bad_stream_error(|t| {
            let mut s = t.stream(0, 1);
            s.begin_packet(0)
                .record(0, 1, &[FieldValue::Str("x"), FieldValue::Bytes(&[])])
                .end_packet(2, 0);
            let first = s.out.len();
            s.begin_packet(3)
                .record(0, 4, &[FieldValue::Str("y"), FieldValue::Bytes(&[])])
                .end_packet(5, 0);
            let mut b = s.out;
            b.truncate(first + 90);
            b
        });
        let (offset, e) = decode_error(&err, &path);
        assert!(matches!(e, DecodeError::BadPacketSize { .. }), "{e:?}");
        assert!(offset > 0);

        // cut inside the packet header
        let (err, path) = bad_stream_error(|t| one_packet(t, |_| {})[..20].to_vec());
        assert!(matches!(
            decode_error(&err, &path).1,
            DecodeError::Truncated { .. }
        ));

        // content_size larger than packet_size
        let (err, path) = bad_stream_error(|t| {
            let mut b = one_packet(t, |_| {});
            b[48..56].copy_from_slice(&(85u64 * 8).to_le_bytes());
            b
        });
        let (_, e) = decode_error(&err, &path);
        assert!(
            e.to_string().contains("content is larger than the packet"),
            "{e}"
        );

        // packet_size not a whole number of bytes
        let (err, path) = bad_stream_error(|t| {
            let mut b = one_packet(t, |_| {});
            b[56..64].copy_from_slice(&(84u64 * 8 + 3).to_le_bytes());
            b
        });
        assert!(matches!(
            decode_error(&err, &path).1,
            DecodeError::BadPacketSize { .. }
        ));

        // a string that runs to the end of the content
        let (err, path) = bad_stream_error(|t| {
            one_packet(t, |s| {
                s.raw(&[0, 0, 0, 0, b'a', b'b'], 0);
            })
        });
        assert!(matches!(
            decode_error(&err, &path).1,
            DecodeError::UnterminatedString { .. }
        ));

        // a bytes length far beyond the packet
        let (err, path) = bad_stream_error(|t| {
            one_packet(t, |s| {
                s.raw(&[0, 0, 0, 0, b'a', 0, 0xff, 0xff, 0xff, 0x7f, 1, 2], 0);
            })
        });
        assert!(matches!(
            decode_error(&err, &path).1,
            DecodeError::Truncated { .. } | DecodeError::LengthTooLarge { .. }
        ));

        // a stream id the metadata does not declare
        let (err, path) = bad_stream_error(|t| {
            let mut s = StreamBuilder::new(t.info.uuid, 4, 1);
            s.begin_packet(0).end_packet(1, 0);
            s.out
        });
        assert_eq!(
            decode_error(&err, &path).1,
            DecodeError::UnknownStream { id: 4 }
        );
    }

    #[test]
    fn bad_metadata_is_an_error_with_path_and_line() {
        let session = tempfile::tempdir().unwrap();
        let dir = session.path().join("kernel");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metadata"), "/* CTF 1.8 */\ntrace { major = 1; };\nevent {\n  fields := struct { nosuch_t x; };\n};\n").unwrap();
        let err = Trace::open(session.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ReadError::Metadata { .. }));
        assert!(
            text.contains("kernel/metadata: line 4: unknown type 'nosuch_t'"),
            "{text}"
        );

        std::fs::write(dir.join("metadata"), 0x75D1_1D57u32.to_le_bytes()).unwrap();
        assert!(matches!(
            Trace::open(session.path()),
            Err(ReadError::PacketizedMetadata { .. })
        ));
    }

    #[test]
    fn text_formatter_lines() {
        let session = tempfile::tempdir().unwrap();
        let t = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0"],
            &[
                (
                    0,
                    0,
                    desc(
                        "demo",
                        "tick",
                        &[
                            ("a", FieldType::U32),
                            ("s", FieldType::String),
                            ("ok", FieldType::Bool),
                            ("b", FieldType::Bytes),
                        ],
                    ),
                ),
                (0, 1, desc("demo", "tock", &[])),
            ],
        );
        let mut s = t.stream(0, 2);
        s.begin_packet(5 * NS)
            .record(
                0,
                5 * NS + 1,
                &[
                    FieldValue::U32(1),
                    FieldValue::Str("x\"y"),
                    FieldValue::Bool(true),
                    FieldValue::Bytes(&[1, 2]),
                ],
            )
            .record(1, 6 * NS + 500, &[])
            .end_packet(7 * NS, 0);
        t.write_stream("channel0_2", &s);
        let mut f = TextFormatter::new();
        let lines: Vec<String> = Trace::open(session.path())
            .unwrap()
            .events()
            .map(|e| f.format(&e.unwrap()))
            .collect();
        assert_eq!(
            lines,
            vec![
                "[22:13:25.000000001] (+?.?????????) testhost demo:tick: { cpu_id = 2 }, { a = 1, s = \"x\\\"y\", ok = true, b = [ [0] = 1, [1] = 2 ] }",
                "[22:13:26.000000500] (+1.000000499) testhost demo:tock: { cpu_id = 2 }, { }",
            ]
        );
    }
}
