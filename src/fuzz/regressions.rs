//! Inputs the fuzz targets failed on (or that review found before them),
//! each a test of the fixed parser through its target, with the allocation
//! bound the harness applies.

use super::alloc::measure;
use super::harness::alloc_bound;
use super::seeds::{backend, int_array_bin};
use super::*;

fn within_bound(input: &[u8], target: fn(&[u8])) {
    let peak = measure(input, target);
    assert!(
        peak <= alloc_bound(input.len()),
        "one allocation of {peak} bytes for a {}-byte input",
        input.len()
    );
}

/// A server that authenticated us then claims a 1 GiB message and sends
/// 8 bytes of it: the frame buffer used to reserve the whole claimed length
/// up front (1 GiB per connection, from one length field).
#[test]
fn a_claimed_frame_length_is_not_reserved_before_its_bytes_arrive() {
    let mut input = vec![0u8]; // one read for everything
    input.extend(backend(b'R', &0i32.to_be_bytes()));
    input.extend(backend(b'Z', b"I"));
    input.push(b'T');
    input.extend((1u32 << 30).to_be_bytes());
    input.extend([0u8; 8]);
    within_bound(&input, replication_session);
}

/// A binary array with dimensions [2^31-1, 0]: the element bound (product
/// 0) let it through, then the outer level reserved 2^31 values (64 GiB,
/// an out-of-memory abort) and would have looped 2^31 times.
#[test]
fn a_binary_array_with_a_zero_dimension_is_an_error_not_a_huge_reservation() {
    let mut bytes = int_array_bin(&[i32::MAX, 0], &[]);
    let conv = Conv::Array {
        elem: Box::new(Conv::Int),
        delim: b',',
    };
    let opts = ValueOptions::default();
    let mut err = None;
    let peak = measure(&bytes, |b| {
        err = convert_binary(1007, &conv, b, &opts).err()
    });
    assert!(peak < 1 << 20, "allocated {peak} bytes");
    assert_eq!(err.expect("an error").reason, "zero-length dimension");
    // The same through the target, as the selector for int4[].
    let sel = value_types().iter().position(|(o, _)| *o == 1007).unwrap();
    let mut input = vec![sel as u8, 0];
    input.append(&mut bytes);
    within_bound(&input, binary_value);
}
