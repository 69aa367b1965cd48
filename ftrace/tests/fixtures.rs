//! Golden tests over pages and format files captured on a real kernel (`tests/data/`,
//! written by `tests/kernel.rs` with `DRTRACE_FTRACE_UPDATE_FIXTURES=1`), and property
//! tests of the page parser and converter over random and damaged input.
//!
//! The oracle for the pages is the kernel itself: each capture holds the instance's `trace`
//! file, the kernel's text rendering of the same buffer, read before the pages were.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use drtrace_ctf::packet::PacketHeader;
use drtrace_ftrace::ctf::{EventCatalog, KernelStream, StreamConfig};
use drtrace_ftrace::format::{EventFormat, FieldKind, IntType};
use drtrace_ftrace::page::{LostEvents, Page, PageLayout};
use proptest::prelude::*;

fn capture(name: &str) -> Capture {
    Capture::load(&data_dir().join(name))
}

#[test]
fn captured_pages_decode_like_the_kernel_prints_them() {
    for name in ["capture", "capture-overwrite"] {
        let c = capture(name);
        let catalog = c.catalog();
        let mut decoded = Vec::new();
        for (cpu, pages) in &c.pages {
            decoded.extend(decode_pages(&catalog, &c.layout, *cpu, pages).0);
        }
        let text = parse_trace_text(&c.trace_text);
        let compared = assert_matches_text(&decoded, &text);
        assert!(compared > 100, "{name}: only {compared} events");
        // Timestamps never go backwards within a CPU.
        for cpu in c.pages.keys() {
            let ts: Vec<u64> = decoded
                .iter()
                .filter(|d| d.cpu == *cpu)
                .map(|d| d.timestamp)
                .collect();
            assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{name}: cpu {cpu}");
        }
    }
}

#[test]
fn captured_exec_events_carry_data_loc_strings() {
    let c = capture("capture");
    let catalog = c.catalog();
    let mut execs: Vec<Decoded> = c
        .pages
        .iter()
        .flat_map(|(cpu, pages)| decode_pages(&catalog, &c.layout, *cpu, pages).0)
        .filter(|d| d.name == "sched_process_exec")
        .collect();
    execs.sort_by_key(|d| d.timestamp);
    // Two plain ones, and one through a long path: an event over 112 bytes, whose length
    // the kernel stores in array[0].
    assert_eq!(execs.len(), 3);
    let names: Vec<&str> = execs
        .iter()
        .map(|e| match e.field("filename") {
            Some(drtrace_ctf::reader::Value::Str(s)) => s.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(&names[..2], ["/bin/true", "/bin/true"]);
    assert!(
        names[2].len() > 112 && names[2].ends_with("/true"),
        "{}",
        names[2]
    );
}

#[test]
fn overwrite_capture_reports_lost_events_on_pages() {
    let c = capture("capture-overwrite");
    let catalog = c.catalog();
    let lost: Vec<LostEvents> = c
        .pages
        .iter()
        .flat_map(|(cpu, pages)| decode_pages(&catalog, &c.layout, *cpu, pages).1)
        .collect();
    // The first page read after the writer overwrote older ones says how many it lost.
    assert!(
        lost.iter()
            .any(|l| matches!(l, LostEvents::Count(n) if *n > 0)),
        "{lost:?}"
    );
    let plain = capture("capture");
    let lost: Vec<LostEvents> = plain
        .pages
        .iter()
        .flat_map(|(cpu, pages)| decode_pages(&catalog, &plain.layout, *cpu, pages).1)
        .collect();
    assert!(lost.iter().all(|l| *l == LostEvents::None), "{lost:?}");
}

fn int(size: u8, signed: bool) -> FieldKind {
    FieldKind::Int(IntType {
        size,
        signed,
        hex: false,
    })
}

#[test]
fn real_format_files_parse() {
    let c = capture("capture");
    let by_name = |n: &str| -> &EventFormat { c.formats.iter().find(|f| f.name == n).unwrap() };

    let sw = by_name("sched_switch");
    assert_eq!(sw.system, "sched");
    assert_eq!(sw.common_fields.len(), 4);
    assert_eq!(sw.common_field("common_pid").unwrap().kind, int(4, true));
    let kinds: Vec<(&str, FieldKind)> = sw
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("prev_comm", FieldKind::CharArray { len: 16 }),
            ("prev_pid", int(4, true)),
            ("prev_prio", int(4, true)),
            ("prev_state", int(8, true)),
            ("next_comm", FieldKind::CharArray { len: 16 }),
            ("next_pid", int(4, true)),
            ("next_prio", int(4, true)),
        ]
    );
    assert_eq!(sw.field("prev_pid").unwrap().type_text, "pid_t");

    let wake = by_name("sched_wakeup");
    assert_eq!(wake.field("target_cpu").unwrap().kind, int(4, true));

    let exec = by_name("sched_process_exec");
    let filename = exec.field("filename").unwrap();
    assert_eq!(filename.type_text, "__data_loc char[]");
    assert_eq!(filename.kind, FieldKind::DynString { relative: false });
    assert_eq!((filename.offset, filename.size), (8, 4));

    let open = by_name("sys_enter_openat");
    assert_eq!(open.field("__syscall_nr").unwrap().kind, int(4, true));
    // `int dfd` is 8 bytes and unsigned here: the sizes in the file win over the C types.
    assert_eq!(open.field("dfd").unwrap().kind, int(8, false));
    assert_eq!(
        open.field("filename").unwrap().kind,
        FieldKind::Int(IntType {
            size: 8,
            signed: false,
            hex: true
        })
    );

    let exit = by_name("sys_exit_write");
    assert_eq!(exit.field("ret").unwrap().kind, int(8, true));
    assert_eq!(exit.field("ret").unwrap().offset, 16);
}

/// Every captured page, loaded once (the property tests draw from it thousands of times).
fn all_pages() -> &'static [(PageLayout, Vec<u8>)] {
    static PAGES: OnceLock<Vec<(PageLayout, Vec<u8>)>> = OnceLock::new();
    PAGES.get_or_init(|| {
        let mut out = Vec::new();
        for name in ["capture", "capture-overwrite"] {
            let c = capture(name);
            for pages in c.pages.values() {
                out.extend(pages.iter().map(|p| (c.layout, p.clone())));
            }
        }
        out
    })
}

fn catalog() -> Arc<EventCatalog> {
    static CATALOG: OnceLock<Arc<EventCatalog>> = OnceLock::new();
    Arc::clone(CATALOG.get_or_init(|| Arc::new(capture("capture").catalog())))
}

/// Parses a page and walks its events; returns how many were yielded before the end or
/// an error. Any panic fails the property.
fn walk(layout: &PageLayout, bytes: &[u8]) -> usize {
    match Page::parse(layout, bytes) {
        Ok(p) => p.events().take_while(Result::is_ok).count(),
        Err(_) => 0,
    }
}

#[test]
fn truncated_real_pages_give_a_prefix_or_an_error() {
    for (layout, page) in all_pages() {
        let (layout, page) = (*layout, page.as_slice());
        let full = walk(&layout, page);
        assert!(full > 0);
        let parsed = Page::parse(&layout, page).unwrap();
        let used = parsed.kept_len(&layout);
        let data_end = layout.data_offset + parsed.used();
        assert_eq!(
            walk(&layout, &page[..used]),
            full,
            "the kept bytes hold every event"
        );
        for len in 0..=used {
            let n = walk(&layout, &page[..len]);
            assert!(n <= full, "cut at {len}: {n} > {full}");
            if len < data_end {
                // A cut inside the used data is reported, not silently taken as complete.
                assert!(
                    Page::parse(&layout, &page[..len]).is_err(),
                    "cut at {len} of {data_end} accepted"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_pages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4200)) {
        walk(&PageLayout::DEFAULT_64, &bytes);
        let small = PageLayout { page_size: 64, commit_size: 4, data_offset: 12 };
        walk(&small, &bytes);
    }

    #[test]
    fn random_commit_and_events_never_panic(
        commit in any::<u64>(),
        words in proptest::collection::vec(any::<u32>(), 0..1020),
    ) {
        // Random bytes rarely get past the commit check; a plausible commit exercises the
        // event walk.
        let mut page = vec![0u8; 16];
        page[8..16].copy_from_slice(&((commit % 4200) | (commit & (3 << 30))).to_le_bytes());
        for w in &words {
            page.extend_from_slice(&w.to_le_bytes());
        }
        walk(&PageLayout::DEFAULT_64, &page);
    }

    #[test]
    fn damaged_real_pages_never_panic_and_convert(
        which in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let pages = all_pages();
        let (layout, page) = &pages[which.index(pages.len())];
        let mut page = page.clone();
        for (at, byte) in flips {
            let i = at.index(page.len());
            page[i] = byte;
        }
        walk(layout, &page);
        // The converter takes whatever the parser yields; it must not panic either.
        let header = PacketHeader { uuid: uuid::Uuid::nil(), stream_id: 0, stream_instance_id: 0 };
        let mut s = KernelStream::new(catalog(), *layout, header, 0, StreamConfig::default());
        let mut out = Vec::new();
        let _ = s.push_page(&page, &mut out);
        s.finish(&mut out).unwrap();
    }
}
