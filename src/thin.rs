//! A boxed slice behind one thin pointer: its length lives in the allocation.
//!
//! Per-key lists sit in hash-table slots, and a table's slots are a third empty (a table
//! grows by doubling): the 8 bytes a `Box<[T]>` spends on its length in the slot cost
//! 12 bytes per key, where a 4-byte length in the allocation costs 4, and nothing for an
//! empty list (no allocation at all).

use std::alloc::{self, Layout};
use std::marker::PhantomData;
use std::ptr::NonNull;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable-length slice of `T` in one allocation: a `u32` length, then the items.
/// Empty slices allocate nothing.
pub struct ThinSlice<T: Copy> {
    /// The allocation; none when empty.
    ptr: Option<NonNull<u8>>,
    _items: PhantomData<T>,
}

// SAFETY: a `ThinSlice<T>` owns its items as a `Box<[T]>` does.
unsafe impl<T: Copy + Send> Send for ThinSlice<T> {}
// SAFETY: shared access only reads, as for `Box<[T]>`.
unsafe impl<T: Copy + Sync> Sync for ThinSlice<T> {}

impl<T: Copy> ThinSlice<T> {
    /// Offset of the first item: after the length, at the items' alignment.
    const OFFSET: usize = {
        let a = std::mem::align_of::<T>();
        if a > 4 {
            a
        } else {
            4
        }
    };

    /// The layout of `n` items (`None` if it overflows, or if `n` does not fit the length).
    fn layout(n: usize) -> Option<Layout> {
        u32::try_from(n).ok()?;
        let size = Self::OFFSET.checked_add(std::mem::size_of::<T>().checked_mul(n)?)?;
        Layout::from_size_align(size, Self::OFFSET.max(std::mem::align_of::<T>())).ok()
    }

    /// An empty slice.
    pub const fn new() -> Self {
        ThinSlice {
            ptr: None,
            _items: PhantomData,
        }
    }

    /// A copy of `items` in a new allocation of exactly their size.
    ///
    /// # Panics
    /// If there are more than `u32::MAX` items (state is bounded far below that).
    pub fn from_slice(items: &[T]) -> Self {
        Self::concat(&[items])
    }

    /// The concatenation of `parts` in one allocation of exactly their size (a list grown
    /// or shrunk by one is rebuilt this way: a copy per part, not per item).
    ///
    /// # Panics
    /// If there are more than `u32::MAX` items (state is bounded far below that).
    pub fn concat(parts: &[&[T]]) -> Self {
        let n = parts.iter().map(|p| p.len()).sum();
        if n == 0 {
            return Self::new();
        }
        let layout = Self::layout(n).expect("a state list of under 2^32 items");
        // SAFETY: the layout's size is at least OFFSET (> 0); the length and the `n` items
        // are written within it, each at its alignment (OFFSET is a multiple of T's).
        unsafe {
            let p = alloc::alloc(layout);
            let Some(ptr) = NonNull::new(p) else {
                alloc::handle_alloc_error(layout)
            };
            (p as *mut u32).write(n as u32);
            let mut items = p.add(Self::OFFSET) as *mut T;
            for part in parts {
                std::ptr::copy_nonoverlapping(part.as_ptr(), items, part.len());
                items = items.add(part.len());
            }
            ThinSlice {
                ptr: Some(ptr),
                _items: PhantomData,
            }
        }
    }

    pub fn len(&self) -> usize {
        match self.ptr {
            // SAFETY: an allocation starts with its length.
            Some(p) => unsafe { (p.as_ptr() as *const u32).read() as usize },
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ptr.is_none()
    }

    /// Bytes allocated (the length and the items; none when empty).
    pub fn heap_bytes(&self) -> usize {
        match self.len() {
            0 => 0,
            n => Self::OFFSET + n * std::mem::size_of::<T>(),
        }
    }

    pub fn as_slice(&self) -> &[T] {
        let Some(p) = self.ptr else {
            return &[];
        };
        // SAFETY: `len` items were written after OFFSET by `from_slice`.
        unsafe { std::slice::from_raw_parts(p.as_ptr().add(Self::OFFSET) as *const T, self.len()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let n = self.len();
        let Some(p) = self.ptr else {
            return &mut [];
        };
        // SAFETY: as `as_slice`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(p.as_ptr().add(Self::OFFSET) as *mut T, n) }
    }
}

impl<T: Copy> Drop for ThinSlice<T> {
    fn drop(&mut self) {
        if let (Some(p), Some(layout)) = (self.ptr, Self::layout(self.len())) {
            // SAFETY: allocated by `from_slice` with this very layout (same length).
            unsafe { alloc::dealloc(p.as_ptr(), layout) }
        }
    }
}

impl<T: Copy> Default for ThinSlice<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> Clone for ThinSlice<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }
}

impl<T: Copy> std::ops::Deref for ThinSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Copy> std::ops::DerefMut for ThinSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<'a, T: Copy> IntoIterator for &'a ThinSlice<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for ThinSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl<T: Copy + PartialEq> PartialEq for ThinSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy> From<&[T]> for ThinSlice<T> {
    fn from(items: &[T]) -> Self {
        Self::from_slice(items)
    }
}

impl<T: Copy> From<Vec<T>> for ThinSlice<T> {
    fn from(items: Vec<T>) -> Self {
        Self::from_slice(&items)
    }
}

impl<T: Copy> FromIterator<T> for ThinSlice<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::from_slice(&iter.into_iter().collect::<Vec<T>>())
    }
}

/// Encoded as the slice (the same bytes as a `Box<[T]>`).
impl<T: Copy + Serialize> Serialize for ThinSlice<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de, T: Copy + Deserialize<'de>> Deserialize<'de> for ThinSlice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<T>::deserialize(d)?;
        if Self::layout(items.len()).is_none() {
            return Err(serde::de::Error::custom("list too long"));
        }
        Ok(Self::from_slice(&items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_clones_and_counts_its_bytes() {
        let empty: ThinSlice<u64> = ThinSlice::new();
        assert_eq!(
            (empty.len(), empty.heap_bytes(), empty.as_slice()),
            (0, 0, &[][..])
        );
        let mut s: ThinSlice<[u32; 3]> = ThinSlice::from_slice(&[[1, 2, 3], [4, 5, 6]]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.heap_bytes(), 4 + 24);
        s[1][0] = 9;
        let c = s.clone();
        assert_eq!(c.as_slice(), &[[1, 2, 3], [9, 5, 6]]);
        assert_eq!(c, s);
        let bytes: ThinSlice<u8> = (0..=255u8).collect();
        assert_eq!(bytes.len(), 256);
        assert_eq!(bytes[255], 255);
        let parts = ThinSlice::concat(&[&[1u16, 2][..], &[], &[3], &[4, 5]]);
        assert_eq!(parts.as_slice(), &[1, 2, 3, 4, 5]);
        assert!(ThinSlice::<u16>::concat(&[&[], &[]]).is_empty());
        let wide: ThinSlice<u64> = vec![u64::MAX, 7].into();
        assert_eq!(wide.heap_bytes(), 8 + 16);
        assert_eq!(wide.as_ptr() as usize % 8, 0);
        let enc = postcard::to_allocvec(&s).unwrap();
        assert_eq!(
            enc,
            postcard::to_allocvec(&s.to_vec().into_boxed_slice()).unwrap()
        );
        let back: ThinSlice<[u32; 3]> = postcard::from_bytes(&enc).unwrap();
        assert_eq!(back, s);
        assert_eq!(std::mem::size_of::<ThinSlice<u8>>(), 8);
    }
}
