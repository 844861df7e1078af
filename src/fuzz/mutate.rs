//! Structured mutations of seed inputs, as a proptest strategy: bit flips,
//! byte changes, truncation, removal, insertion, duplication and length
//! fields overwritten with the values that break parsers (0, sign bits,
//! 2^30, 2^31, all ones). A failing case shrinks to its fewest mutations.

use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Remove(Index, usize),
    Insert(Index, Vec<u8>),
    /// Overwrite a big-endian u32 (or u16) at a position.
    Length(Index, u32, bool),
    /// Copy a span of the input to another place (repeats a message or field).
    Duplicate(Index, Index, usize),
}

/// Values that length and count fields are tested with.
const INTERESTING: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x4000_0000,
    0x4000_0001,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), prop::sample::select(INTERESTING), any::<bool>())
            .prop_map(|(i, v, short)| Mutation::Length(i, v, short)),
        1 => (any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(a, b, n)| Mutation::Duplicate(a, b, n)),
    ]
}

/// Apply mutations in order (positions are taken modulo the current length).
pub fn apply(mut v: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = v.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::FlipBit(i, b) if len > 0 => v[at(i)] ^= 1 << b,
            Mutation::SetByte(i, b) if len > 0 => v[at(i)] = *b,
            Mutation::Truncate(i) => v.truncate(at(i)),
            Mutation::Remove(i, n) => {
                let s = at(i);
                v.drain(s..(s + n).min(len));
            }
            Mutation::Insert(i, b) => {
                let s = at(i);
                v.splice(s..s, b.iter().copied());
            }
            Mutation::Length(i, x, short) => {
                let bytes = if *short {
                    (*x as u16).to_be_bytes().to_vec()
                } else {
                    x.to_be_bytes().to_vec()
                };
                let s = at(i);
                for (k, b) in bytes.into_iter().enumerate() {
                    match v.get_mut(s + k) {
                        Some(slot) => *slot = b,
                        None => v.push(b),
                    }
                }
            }
            Mutation::Duplicate(a, b, n) if len > 0 => {
                let (from, to) = (at(a), at(b));
                let span: Vec<u8> = v[from..(from + n).min(len)].to_vec();
                v.splice(to..to, span);
            }
            _ => {}
        }
    }
    v
}

/// Inputs for one target: mostly mutated seeds, some plain arbitrary bytes.
pub fn inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let arbitrary = proptest::collection::vec(any::<u8>(), 0..512);
    if seeds.is_empty() {
        return arbitrary.boxed();
    }
    let n = seeds.len();
    let mutated = (0..n, proptest::collection::vec(mutation(), 0..6))
        .prop_map(move |(i, ms)| apply(seeds[i].clone(), &ms));
    prop_oneof![1 => arbitrary, 8 => mutated].boxed()
}
