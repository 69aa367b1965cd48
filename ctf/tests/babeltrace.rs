//! Agreement with the real babeltrace2: traces written with this crate's metadata and packet
//! encoders must read in babeltrace2 exactly as expected, and the crate's own reader and
//! text formatter must agree with it line for line.
//!
//! Without babeltrace2 these tests print why they skip; under CI they fail instead.

mod common;

#[cfg(test)]
mod tests {
    use drtrace_ctf::metadata::Domain;
    use drtrace_ctf::reader::Trace;
    use drtrace_ctf::record::FieldValue;
    use drtrace_ctf::text::TextFormatter;
    use drtrace_proto::event::FieldType;

    use super::common::*;

    const UST: &str = "ust/uid/1000/64-bit";
    const NS: u64 = 1_000_000_000;

    /// Our reader's lines, through the text formatter.
    fn our_lines(dir: &std::path::Path) -> Vec<String> {
        let mut f = TextFormatter::new();
        Trace::open(dir)
            .unwrap()
            .events()
            .map(|e| f.format(&e.unwrap()))
            .collect()
    }

    #[test]
    fn every_type_and_header_kind_reads_as_expected() {
        let Some(bt) = babeltrace2() else { return };
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
                        "t",
                        &[
                            ("a", FieldType::U32),
                            ("f", FieldType::F32),
                            ("g", FieldType::F64),
                            ("s", FieldType::String),
                            ("i", FieldType::I64),
                            ("align", FieldType::I8),
                            ("w", FieldType::U16),
                        ],
                    ),
                ),
                (0, 5, desc("demo", "empty", &[])),
                (
                    0,
                    1000,
                    desc(
                        "demo",
                        "big",
                        &[("ok", FieldType::Bool), ("b", FieldType::Bytes)],
                    ),
                ),
            ],
        );
        let base = 5 * NS;
        let near_wrap = (base | 0x7ff_ffff) - 3; // 3 cycles before a 2^27 boundary
        let after_wrap = near_wrap + 10;
        let wrapped_compact =
            (5u32 | u32::try_from(after_wrap & 0x7ff_ffff).unwrap() << 5).to_le_bytes();
        let mut s = t.stream(0, 0);
        s.begin_packet(base)
            .record(
                0,
                base + 1,
                &[
                    FieldValue::U32(1),
                    FieldValue::F32(1.25),
                    FieldValue::F64(-0.1),
                    FieldValue::Str("q'?\\\t"),
                    FieldValue::I64(-5),
                    FieldValue::I8(-128),
                    FieldValue::U16(65535),
                ],
            )
            .record(
                1000,
                base + 2,
                &[FieldValue::Bool(true), FieldValue::Bytes(&[1, 2])],
            )
            .record(5, near_wrap, &[])
            // a compact header whose 27 bits wrapped: rebuilt by adding 2^27
            .raw(&wrapped_compact, after_wrap)
            .record(5, after_wrap + 1, &[])
            .end_packet(after_wrap + 2, 0);
        s.begin_packet(after_wrap + 100)
            .record(
                0,
                after_wrap + 101,
                &[
                    FieldValue::U32(2),
                    FieldValue::F32(1e10),
                    FieldValue::F64(1_234_567.0),
                    FieldValue::Str(""),
                    FieldValue::I64(i64::MIN),
                    FieldValue::I8(0),
                    FieldValue::U16(0),
                ],
            )
            .end_packet(after_wrap + 102, 3);
        s.lose_packets(2);
        s.begin_packet(after_wrap + 200)
            .record(
                1000,
                after_wrap + 201,
                &[FieldValue::Bool(false), FieldValue::Bytes(&[])],
            )
            .end_packet(after_wrap + 202, 0);
        t.write_stream("channel0_0", &s);

        // base = 5e9 = 0x1_2a05_f200, so near_wrap = 5e9 - 0x205_f200 + 0x7ff_ffff - 3
        // = 5_100_273_660 cycles (ns at 1 GHz)
        let (lines, stderr) = run_babeltrace2(&bt, session.path());
        let expected = [
            "[22:13:25.000000001] (+?.?????????) testhost demo:t: { cpu_id = 0 }, { a = 1, f = 1.25, g = -0.1, s = \"q\\'\\?\\\\\\t\", i = -5, align = -128, w = 65535 }",
            "[22:13:25.000000002] (+0.000000001) testhost demo:big: { cpu_id = 0 }, { ok = ( \"true\" : container = 1 ), b_length = 2, b = [ [0] = 1, [1] = 2 ] }",
            "[22:13:25.100273660] (+0.100273658) testhost demo:empty: { cpu_id = 0 }, { }",
            "[22:13:25.100273670] (+0.000000010) testhost demo:empty: { cpu_id = 0 }, { }",
            "[22:13:25.100273671] (+0.000000001) testhost demo:empty: { cpu_id = 0 }, { }",
            "[22:13:25.100273771] (+0.000000100) testhost demo:t: { cpu_id = 0 }, { a = 2, f = 1e+10, g = 1.23457e+06, s = \"\", i = -9223372036854775808, align = 0, w = 0 }",
            "[22:13:25.100273871] (+0.000000100) testhost demo:big: { cpu_id = 0 }, { ok = ( \"false\" : container = 0 ), b_length = 0, b = [ ] }",
        ];
        assert_eq!(lines, expected, "babeltrace2 stderr:\n{stderr}");
        assert!(
            stderr.contains("Tracer discarded 3 events between"),
            "{stderr}"
        );
        assert!(
            stderr.contains("Tracer discarded 2 packets between"),
            "{stderr}"
        );

        // Our formatter prints the same lines, except booleans and byte sequences (see the
        // text module's docs).
        let ours = our_lines(session.path());
        assert_eq!(ours.len(), expected.len());
        for (i, (our, theirs)) in ours.iter().zip(expected).enumerate() {
            if theirs.contains("demo:big") {
                continue;
            }
            assert_eq!(our, theirs, "line {i}");
        }
        assert_eq!(
            ours[1],
            "[22:13:25.000000002] (+0.000000001) testhost demo:big: { cpu_id = 0 }, { ok = true, b = [ [0] = 1, [1] = 2 ] }"
        );
        assert!(ours[6].ends_with("{ ok = false, b = [ ] }"), "{}", ours[6]);

        // And our stream statistics match babeltrace2's warnings.
        let stats = Trace::open(session.path()).unwrap().stream_stats().unwrap();
        assert_eq!(stats[0].events_discarded, 3);
        assert_eq!(stats[0].lost_packets[0].lost(), 2);
    }

    /// A session with userspace (per-UID and per-PID) and kernel traces whose clocks run at
    /// different frequencies and offsets but share the boot id: babeltrace2 merges all of
    /// them in time order, and so does our reader.
    #[test]
    fn ust_and_kernel_traces_merge_in_time_order() {
        let Some(bt) = babeltrace2() else { return };
        let session = tempfile::tempdir().unwrap();
        let ust = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["channel0"],
            &[(0, 0, desc("app", "ev", &[("n", FieldType::U32)]))],
        );
        let pid = TraceDir::create(
            session.path(),
            "ust/pid/app-42-20231114-221320",
            Domain::Ust,
            NS,
            &["channel0"],
            &[(0, 0, desc("pidapp", "ev", &[("n", FieldType::U32)]))],
        );
        // A TSC-like clock: 2.5 GHz, with cycle 0 at CLOCK_MONOTONIC 1000 ns.
        let mut kernel_info = trace_info(Domain::Kernel, "kernel", 2_500_000_000);
        kernel_info.clock.offset_ns = 1000;
        let kernel = TraceDir::create(
            session.path(),
            "kernel",
            Domain::Kernel,
            2_500_000_000,
            &["kchan"],
            &[(
                0,
                3,
                desc(
                    "sched",
                    "switch",
                    &[("prev", FieldType::I32), ("comm", FieldType::String)],
                ),
            )],
        );
        // Rewrite the kernel metadata with the offset clock.
        let mut text = drtrace_ctf::metadata::preamble(
            &kernel_info,
            &[drtrace_ctf::metadata::StreamInfo {
                id: 0,
                channel: "kchan".into(),
            }],
        )
        .unwrap();
        text += &drtrace_ctf::metadata::event_declaration(
            0,
            3,
            &desc(
                "sched",
                "switch",
                &[("prev", FieldType::I32), ("comm", FieldType::String)],
            ),
        )
        .unwrap();
        std::fs::write(kernel.dir.join("metadata"), text).unwrap();

        let mut u = ust.stream(0, 0);
        u.begin_packet(1000)
            .record(0, 1100, &[FieldValue::U32(1)])
            .record(0, 1300, &[FieldValue::U32(3)])
            .record(0, 1500, &[FieldValue::U32(5)])
            .end_packet(1600, 0);
        ust.write_stream("channel0_0", &u);
        let mut p = pid.stream(0, 1);
        p.begin_packet(1000)
            .record(0, 1250, &[FieldValue::U32(25)])
            .end_packet(1600, 0);
        pid.write_stream("channel0_1", &p);
        // kernel cycle c is at 1000 + c * 0.4 ns
        let mut k = kernel.stream(0, 2);
        k.begin_packet(0)
            .record(3, 500, &[FieldValue::I32(-1), FieldValue::Str("a")]) // 1200 ns
            .record(3, 1000, &[FieldValue::I32(7), FieldValue::Str("b")]) // 1400 ns
            .record(3, 1125, &[FieldValue::I32(8), FieldValue::Str("c")]) // 1450 ns
            .end_packet(2000, 0);
        kernel.write_stream("kchan_2", &k);

        let (lines, stderr) = run_babeltrace2(&bt, session.path());
        let expected = [
            "[22:13:20.000001100] (+?.?????????) testhost app:ev: { cpu_id = 0 }, { n = 1 }",
            "[22:13:20.000001200] (+0.000000100) testhost sched:switch: { cpu_id = 2 }, { prev = -1, comm = \"a\" }",
            "[22:13:20.000001250] (+0.000000050) testhost:app:(42) pidapp:ev: { cpu_id = 1 }, { n = 25 }",
            "[22:13:20.000001300] (+0.000000050) testhost app:ev: { cpu_id = 0 }, { n = 3 }",
            "[22:13:20.000001400] (+0.000000100) testhost sched:switch: { cpu_id = 2 }, { prev = 7, comm = \"b\" }",
            "[22:13:20.000001450] (+0.000000050) testhost sched:switch: { cpu_id = 2 }, { prev = 8, comm = \"c\" }",
            "[22:13:20.000001500] (+0.000000050) testhost app:ev: { cpu_id = 0 }, { n = 5 }",
        ];
        assert_eq!(lines, expected, "babeltrace2 stderr:\n{stderr}");
        assert_eq!(our_lines(session.path()), expected);
    }

    /// Why every metadata file gets its own trace UUID (`metadata::trace_uuid`): given two
    /// traces with one UUID, babeltrace2 decodes both with one metadata file.
    #[test]
    fn babeltrace2_needs_distinct_trace_uuids() {
        let Some(bt) = babeltrace2() else { return };
        let session = tempfile::tempdir().unwrap();
        let ust = TraceDir::create(
            session.path(),
            UST,
            Domain::Ust,
            NS,
            &["c"],
            &[(0, 0, desc("u", "e", &[]))],
        );
        let kernel = TraceDir::create(
            session.path(),
            "kernel",
            Domain::Kernel,
            NS,
            &["c"],
            &[(0, 0, desc("k", "e", &[]))],
        );
        for (t, ts) in [(&ust, 10), (&kernel, 20)] {
            // Both streams claim the per-UID trace's UUID.
            let mut s = StreamBuilder::new(ust.info.uuid, 0, 0);
            s.begin_packet(0).record(0, ts, &[]).end_packet(ts + 1, 0);
            t.write_stream("c_0", &s);
        }
        std::fs::write(
            kernel.dir.join("metadata"),
            std::fs::read_to_string(kernel.dir.join("metadata"))
                .unwrap()
                .replace(&kernel.info.uuid.to_string(), &ust.info.uuid.to_string()),
        )
        .unwrap();
        let out = std::process::Command::new(&bt)
            .arg(session.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let both = stdout.contains(" u:e: ") && stdout.contains(" k:e: ");
        assert!(
            !both,
            "babeltrace2 now keeps same-UUID traces apart:\n{stdout}"
        );
        // Our reader keeps them apart either way.
        let names: Vec<String> = Trace::open(session.path())
            .unwrap()
            .read_all()
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["u:e", "k:e"]);
    }
}
