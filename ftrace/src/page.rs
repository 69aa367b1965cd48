//! The ftrace ring-buffer page parser: what `per_cpu/cpuN/trace_pipe_raw` returns.
//!
//! A page (the kernel calls it a sub-buffer; `events/header_page` gives its layout, 4096
//! bytes on this machine):
//!
//! ```text
//! offset  size
//!      0     8  u64 timestamp     absolute, in the instance's trace_clock
//!      8     8  commit            (a `long`: 4 bytes on 32-bit kernels)
//!                                   bits 0..=29  bytes of event data used
//!                                   bit  30      the lost-event count follows the data
//!                                   bit  31      events were lost before this page
//!     16  4080  event data        `commit & 0x3fff_ffff` bytes of it are used
//! ```
//!
//! Each event starts with a 32-bit word, `type_len:5 | time_delta:27` (low bits first), and
//! is 4-byte aligned. These rules follow `include/linux/ring_buffer.h`,
//! `kernel/trace/ring_buffer.c` (`rb_event_length`, `rb_update_read_stamp`,
//! `rb_fix_abs_ts`) and libtraceevent's `kbuffer-parse.c` (`translate_data`):
//!
//! | `type_len` | meaning | size | time |
//! |---|---|---|---|
//! | 1..=28 | data of `type_len * 4` bytes | 4 + data | `+= time_delta` |
//! | 0 | data; `array[0]` = data length + 4 | 4 + `array[0]` | `+= time_delta` |
//! | 29, `time_delta == 0` | padding to the end of the page | rest | none |
//! | 29, `time_delta != 0` | a discarded event; `array[0]` = its length | 4 + `array[0]` | `+= time_delta` |
//! | 30 | time extend | 8 | `+= array[0] << 27 \| time_delta` |
//! | 31 | absolute time stamp (59 bits) | 8 | `= array[0] << 27 \| time_delta`, top 5 bits kept |
//!
//! A discarded event keeps the delta the writer gave it (or 1 if that was 0), and the writer
//! computed the next event's delta from it, so its delta is added like kbuffer does.
//!
//! Nothing here trusts the page: every length is checked against the bytes that are there,
//! each step advances by at least 4 bytes within a page of bounded size (so loops end), and
//! a malformed page yields the events before the problem and then a [`PageError`] naming the
//! byte offset.

use thiserror::Error;

/// `type_len` values up to this one encode the data length in words.
pub const TYPE_DATA_LEN_MAX: u32 = 28;
/// `type_len` of padding (or of a discarded event when `time_delta` is not zero).
pub const TYPE_PADDING: u32 = 29;
/// `type_len` of a time extend.
pub const TYPE_TIME_EXTEND: u32 = 30;
/// `type_len` of an absolute time stamp.
pub const TYPE_TIME_STAMP: u32 = 31;
/// Bits of `time_delta` in the event header.
pub const TIME_DELTA_BITS: u32 = 27;
/// Mask of the used-bytes part of `commit`.
pub const COMMIT_MASK: u64 = (1 << 30) - 1;
/// `commit` bit: the lost-event count is stored after the data.
pub const MISSED_STORED: u64 = 1 << 30;
/// `commit` bit: events were lost before this page.
pub const MISSED_EVENTS: u64 = 1 << 31;
/// The top 5 bits of a timestamp, which an absolute time stamp event cannot carry.
const TS_MSB: u64 = 0xf8 << 56;

const _: () = assert!(TYPE_PADDING == TYPE_DATA_LEN_MAX + 1);
const _: () = assert!(TS_MSB.count_ones() == 64 - (TIME_DELTA_BITS + 32));

/// Where the parts of a page are, from `events/header_page`
/// ([`crate::format::HeaderPage::layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageLayout {
    /// Bytes in a page: header plus data area.
    pub page_size: usize,
    /// Bytes of the `commit` word at offset 8: 8 on 64-bit kernels, 4 on 32-bit ones.
    pub commit_size: usize,
    /// Offset of the first event.
    pub data_offset: usize,
}

impl PageLayout {
    /// The largest page the parser accepts (the kernel allows sub-buffers up to 1 MiB with
    /// `buffer_subbuf_size_kb`; anything larger is not a page).
    pub const MAX_PAGE_SIZE: usize = 1 << 20;

    /// The layout of a 64-bit kernel with 4 KiB pages, as on this machine.
    pub const DEFAULT_64: PageLayout = PageLayout {
        page_size: 4096,
        commit_size: 8,
        data_offset: 16,
    };

    /// Bytes of the data area.
    pub fn data_capacity(&self) -> usize {
        self.page_size.saturating_sub(self.data_offset)
    }
}

impl Default for PageLayout {
    fn default() -> Self {
        Self::DEFAULT_64
    }
}

/// A page could not be parsed; `offset` is the byte offset in the page.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PageError {
    /// The page is shorter than its header.
    #[error("page of {len} bytes is shorter than its {needed}-byte header")]
    ShortHeader {
        /// Bytes given.
        len: usize,
        /// Header size.
        needed: usize,
    },
    /// `commit` says more data than the page holds.
    #[error("commit of {commit} bytes at offset 8 exceeds the {capacity} bytes available")]
    CommitTooLarge {
        /// The used-bytes value.
        commit: u64,
        /// Data bytes in the page (or in the bytes given, if fewer).
        capacity: usize,
    },
    /// An event runs past the used data.
    #[error("event at offset {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// Offset of the event header.
        offset: usize,
        /// Bytes the event claims.
        needed: usize,
        /// Bytes left before the end of the used data.
        available: usize,
    },
    /// A length word is impossible (below its own size).
    #[error("event at offset {offset} has an invalid length word {length}")]
    BadLength {
        /// Offset of the event header.
        offset: usize,
        /// The length word.
        length: u32,
    },
}

/// Events lost before a page, as its `commit` flags say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LostEvents {
    /// None were lost.
    #[default]
    None,
    /// Some were lost; the page had no room for the count.
    Unknown,
    /// This many were lost.
    Count(u64),
}

impl LostEvents {
    /// A lower bound of the count: 1 when unknown.
    pub fn at_least(self) -> u64 {
        match self {
            LostEvents::None => 0,
            LostEvents::Unknown => 1,
            LostEvents::Count(n) => n,
        }
    }
}

/// One event: its absolute timestamp and its data (common fields first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent<'a> {
    /// Absolute timestamp in the instance's trace clock.
    pub timestamp: u64,
    /// The event's data, as the format files describe it. Its length is the space the
    /// ring buffer reserved, rounded up to 4 bytes, so it may end with padding.
    pub data: &'a [u8],
    /// Offset of the event's header in the page.
    pub offset: usize,
}

/// A parsed page header and its used data; iterate [`Page::events`] for the events.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    /// The page's base timestamp.
    pub timestamp: u64,
    /// Events lost before this page.
    pub lost: LostEvents,
    /// The used part of the data area.
    data: &'a [u8],
    data_offset: usize,
}

impl<'a> Page<'a> {
    /// Parses the header of `bytes`, a page as read from `trace_pipe_raw`.
    ///
    /// `bytes` may be shorter than a full page (only the used bytes of a page were kept),
    /// as long as it holds the header and the used data.
    ///
    /// ```
    /// use drtrace_ftrace::page::{Page, PageLayout};
    /// let mut page = vec![0u8; 4096];
    /// page[0..8].copy_from_slice(&1_000u64.to_le_bytes());
    /// page[8..16].copy_from_slice(&12u64.to_le_bytes()); // 12 bytes of data
    /// page[16..20].copy_from_slice(&(2u32 | 5 << 5).to_le_bytes()); // 8 bytes, +5 ns
    /// page[20..28].copy_from_slice(b"abcdefgh");
    /// let p = Page::parse(&PageLayout::DEFAULT_64, &page)?;
    /// let events: Vec<_> = p.events().collect::<Result<_, _>>()?;
    /// assert_eq!(events.len(), 1);
    /// assert_eq!(events[0].timestamp, 1_005);
    /// assert_eq!(events[0].data, b"abcdefgh");
    /// # Ok::<(), drtrace_ftrace::page::PageError>(())
    /// ```
    pub fn parse(layout: &PageLayout, bytes: &'a [u8]) -> Result<Self, PageError> {
        let header = layout.data_offset.max(8 + layout.commit_size);
        if bytes.len() < header {
            return Err(PageError::ShortHeader {
                len: bytes.len(),
                needed: header,
            });
        }
        let timestamp = read_u64(bytes, 0);
        let commit = if layout.commit_size == 4 {
            u64::from(read_u32(bytes, 8))
        } else {
            read_u64(bytes, 8)
        };
        let used = commit & COMMIT_MASK;
        let available = bytes
            .len()
            .min(layout.page_size)
            .saturating_sub(layout.data_offset);
        let used_len = usize::try_from(used)
            .ok()
            .filter(|&u| u <= available)
            .ok_or(PageError::CommitTooLarge {
                commit: used,
                capacity: available,
            })?;
        let data_end = layout.data_offset + used_len;
        let lost = if commit & MISSED_EVENTS == 0 {
            LostEvents::None
        } else if commit & MISSED_STORED != 0 {
            // The count is a `long` right after the data.
            let size = layout.commit_size;
            if data_end + size <= bytes.len().min(layout.page_size) {
                LostEvents::Count(if size == 4 {
                    u64::from(read_u32(bytes, data_end))
                } else {
                    read_u64(bytes, data_end)
                })
            } else {
                LostEvents::Unknown
            }
        } else {
            LostEvents::Unknown
        };
        Ok(Self {
            timestamp,
            lost,
            data: &bytes[layout.data_offset..data_end],
            data_offset: layout.data_offset,
        })
    }

    /// Bytes of event data the page uses.
    pub fn used(&self) -> usize {
        self.data.len()
    }

    /// Bytes of `bytes` worth keeping: the header, the used data and the stored lost count.
    /// Pages are mostly empty when read early; copy only this much.
    pub fn kept_len(&self, layout: &PageLayout) -> usize {
        let end = self.data_offset + self.data.len();
        if matches!(self.lost, LostEvents::Count(_)) {
            end + layout.commit_size
        } else {
            end
        }
    }

    /// The events, in order; after an error the iterator ends.
    pub fn events(&self) -> Events<'a> {
        Events {
            data: self.data,
            data_offset: self.data_offset,
            pos: 0,
            ts: self.timestamp,
            done: false,
        }
    }
}

/// Iterator over a page's events; see [`Page::events`].
#[derive(Debug, Clone)]
pub struct Events<'a> {
    data: &'a [u8],
    data_offset: usize,
    pos: usize,
    ts: u64,
    done: bool,
}

impl<'a> Events<'a> {
    /// The running timestamp: after the last event read, the time of the last event or
    /// time record.
    pub fn timestamp(&self) -> u64 {
        self.ts
    }

    fn step(&mut self) -> Result<Option<RawEvent<'a>>, PageError> {
        // Each pass consumes at least 4 bytes of a slice no longer than a page, so this
        // loop is bounded by the page size / 4.
        while self.pos < self.data.len() {
            let at = self.pos;
            let offset = self.data_offset + at;
            let left = self.data.len() - at;
            if left < 4 {
                return Err(PageError::Truncated {
                    offset,
                    needed: 4,
                    available: left,
                });
            }
            let word = read_u32(self.data, at);
            let type_len = word & 0x1f;
            let delta = u64::from(word >> 5);
            let array0 = || {
                if left < 8 {
                    Err(PageError::Truncated {
                        offset,
                        needed: 8,
                        available: left,
                    })
                } else {
                    Ok(read_u32(self.data, at + 4))
                }
            };
            match type_len {
                1..=TYPE_DATA_LEN_MAX => {
                    let len = type_len as usize * 4;
                    let end = check_len(offset, 4 + len, left)?;
                    self.ts = self.ts.wrapping_add(delta);
                    self.pos = at + end;
                    return Ok(Some(RawEvent {
                        timestamp: self.ts,
                        data: &self.data[at + 4..at + end],
                        offset,
                    }));
                }
                0 => {
                    let length = array0()?;
                    if length < 4 {
                        return Err(PageError::BadLength { offset, length });
                    }
                    // `array[0]` counts itself; the total is rounded to the 4-byte alignment.
                    let end = check_len(offset, total_len(length), left)?;
                    self.ts = self.ts.wrapping_add(delta);
                    self.pos = at + end;
                    // 4 + length <= end <= left, so this is in bounds.
                    let data_end = (at + 4).saturating_add(length as usize).min(at + end);
                    return Ok(Some(RawEvent {
                        timestamp: self.ts,
                        data: &self.data[at + 8..data_end],
                        offset,
                    }));
                }
                TYPE_PADDING => {
                    if delta == 0 {
                        // The rest of the page is padding.
                        self.pos = self.data.len();
                        return Ok(None);
                    }
                    let length = array0()?;
                    if length < 4 {
                        return Err(PageError::BadLength { offset, length });
                    }
                    let end = check_len(offset, total_len(length), left)?;
                    self.ts = self.ts.wrapping_add(delta);
                    self.pos = at + end;
                }
                TYPE_TIME_EXTEND => {
                    let high = u64::from(array0()?);
                    self.ts = self.ts.wrapping_add(high << TIME_DELTA_BITS | delta);
                    self.pos = at + 8;
                }
                _ => {
                    // TYPE_TIME_STAMP: 59 bits of absolute time; the top bits are the
                    // current ones, plus a carry if the low part wrapped.
                    let high = u64::from(array0()?);
                    let mut abs = high << TIME_DELTA_BITS | delta;
                    if self.ts & TS_MSB != 0 {
                        abs |= self.ts & TS_MSB;
                        if abs < self.ts {
                            abs = abs.wrapping_add(1 << 59);
                        }
                    }
                    self.ts = abs;
                    self.pos = at + 8;
                }
            }
        }
        Ok(None)
    }
}

/// The size of an event whose `array[0]` is `length`: the header word plus `length`,
/// rounded up to 4 bytes (saturating: an absurd length must fail the bounds check, not
/// overflow).
fn total_len(length: u32) -> usize {
    usize::try_from((4 + u64::from(length)).next_multiple_of(4)).unwrap_or(usize::MAX)
}

fn check_len(offset: usize, needed: usize, available: usize) -> Result<usize, PageError> {
    if needed > available {
        Err(PageError::Truncated {
            offset,
            needed,
            available,
        })
    } else {
        Ok(needed)
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<RawEvent<'a>, PageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Builds pages event by event, the way the kernel lays them out: for tests and for
/// synthesizing input.
#[derive(Debug, Clone)]
pub struct PageBuilder {
    layout: PageLayout,
    bytes: Vec<u8>,
}

impl PageBuilder {
    /// An empty page with base timestamp `timestamp`.
    pub fn new(layout: PageLayout, timestamp: u64) -> Self {
        let mut bytes = vec![0u8; layout.data_offset];
        bytes[..8].copy_from_slice(&timestamp.to_le_bytes());
        Self { layout, bytes }
    }

    fn word(&mut self, type_len: u32, delta: u32) {
        debug_assert!(delta < 1 << TIME_DELTA_BITS);
        self.bytes
            .extend_from_slice(&(type_len | delta << 5).to_le_bytes());
    }

    /// Appends a data event `delta` after the previous one, with the header form the
    /// kernel picks for its length (`type_len` words up to 112 bytes, `array[0]` beyond),
    /// or always with `array[0]` when `force_array` is set.
    pub fn event(&mut self, delta: u32, data: &[u8], force_array: bool) -> &mut Self {
        let padded = data.len().max(1).next_multiple_of(4);
        if padded <= TYPE_DATA_LEN_MAX as usize * 4 && !force_array {
            self.word(u32::try_from(padded / 4).unwrap_or(0), delta);
        } else {
            self.word(0, delta);
            let length = u32::try_from(padded + 4).unwrap_or(u32::MAX);
            self.bytes.extend_from_slice(&length.to_le_bytes());
        }
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len() + padded - data.len(), 0);
        self
    }

    /// Appends a time extend of `delta` (more than 27 bits).
    pub fn time_extend(&mut self, delta: u64) -> &mut Self {
        self.word(
            TYPE_TIME_EXTEND,
            (delta & ((1 << TIME_DELTA_BITS) - 1)) as u32,
        );
        let high = u32::try_from(delta >> TIME_DELTA_BITS).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&high.to_le_bytes());
        self
    }

    /// Appends an absolute time stamp (its low 59 bits are stored).
    pub fn time_stamp(&mut self, ts: u64) -> &mut Self {
        self.word(TYPE_TIME_STAMP, (ts & ((1 << TIME_DELTA_BITS) - 1)) as u32);
        let high = ((ts >> TIME_DELTA_BITS) & 0xffff_ffff) as u32;
        self.bytes.extend_from_slice(&high.to_le_bytes());
        self
    }

    /// Appends a discarded event of `len` data bytes (rounded up to 4).
    pub fn discarded(&mut self, delta: u32, len: usize) -> &mut Self {
        let padded = len.next_multiple_of(4);
        self.word(TYPE_PADDING, delta.max(1));
        self.bytes
            .extend_from_slice(&u32::try_from(padded + 4).unwrap_or(0).to_le_bytes());
        self.bytes.resize(self.bytes.len() + padded, 0);
        self
    }

    /// Bytes of event data so far.
    pub fn used(&self) -> usize {
        self.bytes.len() - self.layout.data_offset
    }

    /// The complete page, `page_size` bytes, with `lost` in the commit flags. With
    /// `end_padding`, a padding word (time_delta 0) is written after the data and counted
    /// in `commit`, as a page closed early may carry.
    pub fn finish(&self, lost: LostEvents, end_padding: bool) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        if end_padding {
            bytes.extend_from_slice(&TYPE_PADDING.to_le_bytes());
        }
        let used = (bytes.len() - self.layout.data_offset) as u64;
        let mut commit = used;
        match lost {
            LostEvents::None => {}
            LostEvents::Unknown => commit |= MISSED_EVENTS,
            LostEvents::Count(n) => {
                commit |= MISSED_EVENTS | MISSED_STORED;
                if self.layout.commit_size == 4 {
                    bytes.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
                } else {
                    bytes.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        if self.layout.commit_size == 4 {
            bytes[8..12].copy_from_slice(&u32::try_from(commit).unwrap_or(u32::MAX).to_le_bytes());
        } else {
            bytes[8..16].copy_from_slice(&commit.to_le_bytes());
        }
        bytes.resize(self.layout.page_size.max(bytes.len()), 0);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: PageLayout = PageLayout::DEFAULT_64;

    fn events(page: &[u8]) -> (Vec<(u64, Vec<u8>)>, Option<PageError>) {
        let p = Page::parse(&L, page).unwrap();
        let mut out = Vec::new();
        for e in p.events() {
            match e {
                Ok(e) => out.push((e.timestamp, e.data.to_vec())),
                Err(err) => return (out, Some(err)),
            }
        }
        (out, None)
    }

    #[test]
    fn header_fields_and_lost_flags() {
        let mut b = PageBuilder::new(L, 77);
        b.event(1, b"abcd", false);
        let page = b.finish(LostEvents::Count(12), false);
        let p = Page::parse(&L, &page).unwrap();
        assert_eq!(p.timestamp, 77);
        assert_eq!(p.used(), 8);
        assert_eq!(p.lost, LostEvents::Count(12));
        assert_eq!(p.kept_len(&L), 16 + 8 + 8);
        let p = Page::parse(&L, &page[..p.kept_len(&L)]).unwrap();
        assert_eq!(p.lost, LostEvents::Count(12));
        // Cut before the stored count: still known to be lossy.
        assert_eq!(
            Page::parse(&L, &page[..24]).unwrap().lost,
            LostEvents::Unknown
        );
        let page = b.finish(LostEvents::Unknown, false);
        assert_eq!(Page::parse(&L, &page).unwrap().lost, LostEvents::Unknown);
        assert_eq!(LostEvents::Unknown.at_least(), 1);
        let page = b.finish(LostEvents::None, false);
        assert_eq!(Page::parse(&L, &page).unwrap().lost, LostEvents::None);
    }

    #[test]
    fn every_event_form() {
        let mut b = PageBuilder::new(L, 1_000);
        b.event(5, &[1; 8], false) // type_len 2
            .event(0, &[2; 120], false) // > 112 bytes: array[0]
            .event(3, &[3; 5], true) // forced array[0], padded to 8
            .discarded(7, 16)
            .time_extend(1 << 40)
            .event(0, &[4; 4], false)
            .time_stamp(5_000_000_000)
            .event(2, &[5; 4], false);
        let (evs, err) = events(&b.finish(LostEvents::None, true));
        assert_eq!(err, None);
        let ts: Vec<u64> = evs.iter().map(|e| e.0).collect();
        let after_discard = 1_000 + 5 + 3 + 7;
        assert_eq!(
            ts,
            [
                1_005,
                1_005,
                1_008,
                after_discard + (1 << 40),
                5_000_000_002
            ]
        );
        assert_eq!(evs[0].1, [1; 8]);
        assert_eq!(evs[1].1, [2; 120]);
        assert_eq!(evs[2].1, [3, 3, 3, 3, 3, 0, 0, 0]);
        assert_eq!(evs[3].1, [4; 4]);
    }

    #[test]
    fn absolute_time_stamp_keeps_top_bits() {
        let base = 0xf800_0000_0000_0000u64 | 10;
        let mut b = PageBuilder::new(L, base);
        b.time_stamp(base + 100).event(0, &[0; 4], false);
        let (evs, _) = events(&b.finish(LostEvents::None, false));
        assert_eq!(evs[0].0, base + 100);
        // The stored low 59 bits are below the current ones: the top part carried.
        let mut b = PageBuilder::new(L, base | 0x7ff_ffff_ffff);
        b.time_stamp(5).event(0, &[0; 4], false);
        let (evs, _) = events(&b.finish(LostEvents::None, false));
        assert_eq!(evs[0].0, (base & TS_MSB).wrapping_add(1 << 59) | 5);
    }

    #[test]
    fn errors_carry_offsets() {
        // commit larger than the page
        let mut page = vec![0u8; 4096];
        page[8..16].copy_from_slice(&4081u64.to_le_bytes());
        assert_eq!(
            Page::parse(&L, &page).unwrap_err(),
            PageError::CommitTooLarge {
                commit: 4081,
                capacity: 4080
            }
        );
        assert_eq!(
            Page::parse(&L, &page[..10]).unwrap_err(),
            PageError::ShortHeader {
                len: 10,
                needed: 16
            }
        );
        // an event running past commit, after a good one
        let mut b = PageBuilder::new(L, 0);
        b.event(1, &[9; 4], false).event(1, &[9; 16], false);
        let mut page = b.finish(LostEvents::None, false);
        page[8..16].copy_from_slice(&(8u64 + 8).to_le_bytes());
        let (evs, err) = events(&page);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            err,
            Some(PageError::Truncated {
                offset: 24,
                needed: 20,
                available: 8
            })
        );
        // an array[0] length below 4
        let mut b = PageBuilder::new(L, 0);
        b.event(1, &[9; 4], true);
        let mut page = b.finish(LostEvents::None, false);
        page[20..24].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            events(&page).1,
            Some(PageError::BadLength {
                offset: 16,
                length: 3
            })
        );
        // a 2-byte tail
        let mut page = PageBuilder::new(L, 0).finish(LostEvents::None, false);
        page[8..16].copy_from_slice(&2u64.to_le_bytes());
        assert!(matches!(
            events(&page).1,
            Some(PageError::Truncated {
                offset: 16,
                needed: 4,
                available: 2
            })
        ));
        assert_eq!(
            PageError::Truncated {
                offset: 24,
                needed: 20,
                available: 8
            }
            .to_string(),
            "event at offset 24 needs 20 bytes, 8 left"
        );
    }

    #[test]
    fn padding_without_delta_ends_the_page() {
        let mut b = PageBuilder::new(L, 0);
        b.event(1, &[1; 4], false);
        let mut page = b.finish(LostEvents::None, true);
        // Garbage after the padding word, inside commit, is ignored.
        page[28..32].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        page[8..16].copy_from_slice(&16u64.to_le_bytes());
        let (evs, err) = events(&page);
        assert_eq!((evs.len(), err), (1, None));
    }

    #[test]
    fn thirty_two_bit_layout() {
        let l32 = PageLayout {
            page_size: 4096,
            commit_size: 4,
            data_offset: 12,
        };
        let mut b = PageBuilder::new(l32, 9);
        b.event(1, b"wxyz", false);
        let page = b.finish(LostEvents::Count(3), false);
        let p = Page::parse(&l32, &page).unwrap();
        assert_eq!(p.lost, LostEvents::Count(3));
        let e: Vec<_> = p.events().map(Result::unwrap).collect();
        assert_eq!(
            (e[0].timestamp, e[0].data, e[0].offset),
            (10, &b"wxyz"[..], 12)
        );
    }
}
