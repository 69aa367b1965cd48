//! An atomic `Option<&'static T>`: the one place where a pointer loaded from an atomic is
//! turned back into a reference.
//!
//! Every store takes a `&'static T`, so every non-null pointer the cell ever holds points to
//! something that lives (and stays valid) for the rest of the program; that is the whole
//! safety argument, and this type makes it impossible to break from outside this module.

use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// An atomic `Option<&'static T>`.
pub(crate) struct StaticRef<T: 'static> {
    ptr: AtomicPtr<T>,
}

fn raw<T>(v: Option<&'static T>) -> *mut T {
    v.map_or(ptr::null_mut(), |r| ptr::from_ref(r).cast_mut())
}

fn back<T>(p: *mut T) -> Option<&'static T> {
    // SAFETY: `p` is null or was stored from a `&'static T` (the only way in, see the module
    // docs); shared references to `T` are all anyone gets, and `T: 'static` outlives every
    // caller.
    unsafe { p.cast_const().as_ref() }
}

impl<T: 'static> StaticRef<T> {
    /// An empty cell.
    pub(crate) const fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Loads the reference.
    #[inline(always)]
    pub(crate) fn load(&self, order: Ordering) -> Option<&'static T> {
        back(self.ptr.load(order))
    }

    /// Stores `v`.
    pub(crate) fn store(&self, v: Option<&'static T>, order: Ordering) {
        self.ptr.store(raw(v), order);
    }

    /// Stores `v`, returning the previous reference.
    pub(crate) fn swap(&self, v: Option<&'static T>, order: Ordering) -> Option<&'static T> {
        back(self.ptr.swap(raw(v), order))
    }

    /// Stores `new` if the cell still holds `current` (by address).
    pub(crate) fn compare_exchange_weak(
        &self,
        current: Option<&'static T>,
        new: Option<&'static T>,
        success: Ordering,
        failure: Ordering,
    ) -> Result<(), Option<&'static T>> {
        self.ptr
            .compare_exchange_weak(raw(current), raw(new), success, failure)
            .map(drop)
            .map_err(back)
    }
}

impl<T: 'static> Default for StaticRef<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static> fmt::Debug for StaticRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticRef({:p})", self.ptr.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_static_references() {
        static A: u32 = 1;
        static B: u32 = 2;
        let cell = StaticRef::<u32>::new();
        assert!(cell.load(Ordering::Acquire).is_none());
        cell.store(Some(&A), Ordering::Release);
        assert_eq!(cell.load(Ordering::Acquire), Some(&1));
        assert_eq!(
            cell.compare_exchange_weak(Some(&B), None, Ordering::AcqRel, Ordering::Acquire),
            Err(Some(&1))
        );
        assert_eq!(cell.swap(Some(&B), Ordering::AcqRel), Some(&1));
        assert_eq!(cell.load(Ordering::Acquire), Some(&2));
    }
}
