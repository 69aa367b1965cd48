//! Static event descriptors, their interest words, and the lock-free list of providers.
//!
//! Each [`provider!`](crate::provider) expansion owns one static [`Provider`] and an array of
//! static [`Callsite`]s. A constructor it generates calls [`register_provider`] before `main`
//! (or when a library is `dlopen`ed), which gives each callsite its *app event index* (the
//! position in the list the daemons are told about) and pushes the provider onto an
//! intrusive singly linked list. The list only grows: a node is `'static` and is linked once,
//! by a compare-and-swap on the head (a Treiber stack without pops, so no ABA).
//!
//! The *interest* word of a callsite has bit `i` set when channel slot `i` records the event
//! (see [`crate::channel`]). The hot path loads it `Relaxed`: it is only a hint that the slow
//! path re-checks against the channel itself, so a stale value costs at most one wasted
//! check or one missed event during a session change. It is rebuilt, like tracing-core's
//! `rebuild_interest_cache`, whenever a daemon changes what is recorded.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use drtrace_proto::app::MAX_APP_EVENTS;
use drtrace_proto::event::{EventDescription, FieldDescription, FieldType, LogLevel};

use crate::sys::static_ref::StaticRef;

/// The most verbose level compiled in, from the `max_level_*` features (most restrictive
/// wins); `None` when `max_level_off` compiles every event out.
pub const MAX_LEVEL: Option<LogLevel> = max_level(
    cfg!(feature = "max_level_off"),
    cfg!(feature = "max_level_error"),
    cfg!(feature = "max_level_warn"),
    cfg!(feature = "max_level_info"),
);

/// The level the `max_level_*` features select (`max_level_debug`, or none, keeps all).
const fn max_level(off: bool, error: bool, warn: bool, info: bool) -> Option<LogLevel> {
    if off {
        None
    } else if error {
        Some(LogLevel::Error)
    } else if warn {
        Some(LogLevel::Warning)
    } else if info {
        Some(LogLevel::Info)
    } else {
        Some(LogLevel::Debug)
    }
}

/// True when events of `level` are compiled in. Used in a `const` by the generated code, so
/// a disabled level leaves no code behind.
#[inline(always)]
pub const fn level_enabled(level: LogLevel) -> bool {
    level_within(level, MAX_LEVEL)
}

/// True when `level` is at most as verbose as `max` (syslog order: lower is more severe).
const fn level_within(level: LogLevel, max: Option<LogLevel>) -> bool {
    match max {
        None => false,
        Some(max) => level as u8 <= max as u8,
    }
}

/// Marks a callsite that has no app event index (not registered, or compiled out).
pub(crate) const NO_INDEX: u32 = u32::MAX;

/// One field of an event, as declared.
#[derive(Debug)]
pub struct FieldMeta {
    name: &'static str,
    ty: FieldType,
}

impl FieldMeta {
    /// A field named `name` of type `ty`.
    pub const fn new(name: &'static str, ty: FieldType) -> Self {
        Self { name, ty }
    }
}

/// One event of a provider: its static description and its interest word.
#[derive(Debug)]
pub struct Callsite {
    /// Bit `i`: channel slot `i` may record this event (a hint, see the module docs).
    interest: AtomicU64,
    /// The app event index, or [`NO_INDEX`]; written once, at registration.
    index: AtomicU32,
    name: &'static str,
    level: LogLevel,
    fields: &'static [FieldMeta],
    /// The provider, set at registration (a static cannot name its containing array's
    /// owner at compile time without a cycle the macro would have to spell out).
    provider: StaticRef<Provider>,
}

impl Callsite {
    /// A callsite for the event `name` at `level` with these fields.
    pub const fn new(name: &'static str, level: LogLevel, fields: &'static [FieldMeta]) -> Self {
        Self {
            interest: AtomicU64::new(0),
            index: AtomicU32::new(NO_INDEX),
            name,
            level,
            fields,
            provider: StaticRef::new(),
        }
    }

    /// The interest word: nonzero when some channel may record this event.
    #[inline(always)]
    pub fn interest(&self) -> u64 {
        self.interest.load(Ordering::Relaxed)
    }

    pub(crate) fn set_interest(&self, mask: u64) {
        self.interest.store(mask, Ordering::Relaxed);
    }

    /// The app event index, or [`NO_INDEX`].
    #[inline(always)]
    pub(crate) fn index(&self) -> u32 {
        self.index.load(Ordering::Relaxed)
    }

    /// The provider's name, once registered.
    fn provider_name(&self) -> &'static str {
        self.provider.load(Ordering::Acquire).map_or("", |p| p.name)
    }

    /// The description the daemons receive.
    pub(crate) fn description(&self) -> EventDescription {
        EventDescription {
            provider: self.provider_name().to_owned(),
            name: self.name.to_owned(),
            loglevel: self.level,
            fields: self
                .fields
                .iter()
                .map(|f| FieldDescription {
                    name: f.name.to_owned(),
                    ty: f.ty,
                })
                .collect(),
        }
    }
}

/// A provider: a named group of events, one per [`provider!`](crate::provider) expansion.
#[derive(Debug)]
pub struct Provider {
    name: &'static str,
    callsites: &'static [Callsite],
    /// Next node of the provider list (older registrations).
    next: StaticRef<Provider>,
    /// Set by the first registration; later calls do nothing.
    registered: AtomicBool,
}

impl Provider {
    /// The provider `name` with these callsites.
    pub const fn new(name: &'static str, callsites: &'static [Callsite]) -> Self {
        Self {
            name,
            callsites,
            next: StaticRef::new(),
            registered: AtomicBool::new(false),
        }
    }
}

/// Head of the provider list (the newest registration).
static PROVIDERS: StaticRef<Provider> = StaticRef::new();
/// The next free app event index.
static NEXT_INDEX: AtomicU32 = AtomicU32::new(0);

/// Registers `provider`'s events: called by the constructor each `provider!` expansion
/// generates, before `main` or at `dlopen`. Lock-free and idempotent.
pub fn register_provider(provider: &'static Provider) {
    if provider.registered.swap(true, Ordering::AcqRel) {
        return;
    }
    for cs in provider.callsites {
        cs.provider.store(Some(provider), Ordering::Release);
    }
    let kept = || {
        provider
            .callsites
            .iter()
            .filter(|cs| level_enabled(cs.level) && cs.description().validate().is_ok())
    };
    let count = u32::try_from(kept().count()).unwrap_or(u32::MAX);
    let first = NEXT_INDEX.fetch_add(count, Ordering::Relaxed);
    let fits = u64::from(first) + u64::from(count) <= MAX_APP_EVENTS as u64;
    if fits {
        for (k, cs) in (0u32..).zip(kept()) {
            cs.index.store(first + k, Ordering::Relaxed);
        }
    } else {
        crate::debug::log(format_args!(
            "provider {} not registered: more than {MAX_APP_EVENTS} events",
            provider.name
        ));
    }
    let mut head = PROVIDERS.load(Ordering::Relaxed);
    loop {
        provider.next.store(head, Ordering::Relaxed);
        // Release: pairs with the Acquire loads in `for_each_callsite`, which must see the
        // indexes and `next` stored above.
        match PROVIDERS.compare_exchange_weak(
            head,
            Some(provider),
            Ordering::Release,
            Ordering::Relaxed,
        ) {
            Ok(_) => break,
            Err(now) => head = now,
        }
    }
    crate::runtime::events_added();
}

/// Calls `f` on every callsite of every registered provider.
pub(crate) fn for_each_callsite(mut f: impl FnMut(&'static Callsite)) {
    // Acquire: pairs with the Release CAS in `register_provider`.
    let mut node = PROVIDERS.load(Ordering::Acquire);
    while let Some(p) = node {
        p.callsites.iter().for_each(&mut f);
        node = p.next.load(Ordering::Acquire);
    }
}

/// The registered events in index order: the longest run `0..n` with no gap (a provider
/// that took indexes but is not linked yet ends the run; it is picked up by the next call).
pub(crate) fn registered_events() -> Vec<&'static Callsite> {
    let mut all = Vec::new();
    for_each_callsite(|cs| {
        if cs.index() != NO_INDEX {
            all.push(cs);
        }
    });
    all.sort_by_key(|cs| cs.index());
    let run = (0u32..)
        .zip(&all)
        .take_while(|(want, cs)| cs.index() == *want)
        .count();
    all.truncate(run);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_restrictive_feature_wins() {
        assert_eq!(max_level(false, false, false, false), Some(LogLevel::Debug));
        assert_eq!(max_level(false, false, false, true), Some(LogLevel::Info));
        assert_eq!(max_level(false, false, true, true), Some(LogLevel::Warning));
        assert_eq!(max_level(false, true, true, false), Some(LogLevel::Error));
        assert_eq!(max_level(true, true, false, true), None);
        // Levels more severe than the maximum stay in: `Notice` sits between warning and
        // info, so `max_level_info` keeps it and `max_level_warn` drops it.
        let info = max_level(false, false, false, true);
        let warn = max_level(false, false, true, false);
        assert!(level_within(LogLevel::Notice, info));
        assert!(!level_within(LogLevel::Debug, info));
        assert!(!level_within(LogLevel::Notice, warn));
        assert!(level_within(LogLevel::Emergency, warn));
        assert!(!level_within(LogLevel::Emergency, None));
    }

    // The tests below register Info and Debug events: they need the default features.
    #[cfg(not(any(
        feature = "max_level_off",
        feature = "max_level_error",
        feature = "max_level_warn",
        feature = "max_level_info"
    )))]
    #[test]
    fn level_filter_follows_the_features() {
        // The unit tests build without `max_level_*` features: everything is compiled in.
        assert_eq!(MAX_LEVEL, Some(LogLevel::Debug));
        assert!(level_enabled(LogLevel::Debug));
        assert!(level_enabled(LogLevel::Emergency));
    }

    /// With `max_level_warn`, events below warning are neither compiled nor registered.
    #[cfg(all(
        feature = "max_level_warn",
        not(feature = "max_level_off"),
        not(feature = "max_level_error")
    ))]
    #[test]
    fn events_above_the_max_level_are_not_registered() {
        assert_eq!(MAX_LEVEL, Some(LogLevel::Warning));
        static WARN_SITES: [Callsite; 2] = [
            Callsite::new("loud", LogLevel::Warning, &[]),
            Callsite::new("chatty", LogLevel::Info, &[]),
        ];
        static WARN: Provider = Provider::new("unit_levels", &WARN_SITES);
        register_provider(&WARN);
        assert_ne!(WARN_SITES[0].index(), NO_INDEX);
        assert_eq!(WARN_SITES[1].index(), NO_INDEX);
    }

    #[cfg(not(any(
        feature = "max_level_off",
        feature = "max_level_error",
        feature = "max_level_warn",
        feature = "max_level_info"
    )))]
    #[test]
    fn registration_assigns_contiguous_indexes_and_skips_invalid_names() {
        static FIELDS: [FieldMeta; 2] = [
            FieldMeta::new("a", FieldType::U32),
            FieldMeta::new("s", FieldType::String),
        ];
        static SITES: [Callsite; 3] = [
            Callsite::new("one", LogLevel::Info, &FIELDS),
            Callsite::new("bad name", LogLevel::Info, &[]),
            Callsite::new("two", LogLevel::Debug, &[]),
        ];
        static UNIT: Provider = Provider::new("unit_provider", &SITES);

        register_provider(&UNIT);
        register_provider(&UNIT);
        let events = registered_events();
        let ours: Vec<_> = events
            .iter()
            .filter(|cs| cs.provider_name() == "unit_provider")
            .collect();
        assert_eq!(ours.len(), 2, "the invalid name is not registered");
        assert_eq!(ours[1].index(), ours[0].index() + 1);
        assert_eq!(SITES[1].index(), NO_INDEX);
        let d = SITES[0].description();
        assert_eq!(d.full_name(), "unit_provider:one");
        assert_eq!(d.fields[1].ty, FieldType::String);
        // Indexes are a gap-free run from 0.
        for (i, cs) in events.iter().enumerate() {
            assert_eq!(cs.index() as usize, i);
        }
    }
}
