//! Tensor payload decoding: shape, row-index and length validation on hostile tensors.
//!
//! Each tensor is decoded against a small expected shape (as the aggregator decodes against
//! its model) and, when its own declared shape is small, against that too, so the length and
//! index checks are reached for every payload kind.
#![no_main]

use fedfuse_protocol::tensor::NamedTensor;
use fedfuse_protocol::{Message, MessageKind};
use libfuzzer_sys::fuzz_target;

fn check(tensor: &NamedTensor) {
    for expected in [&[4u32, 4][..], &tensor.shape[..]] {
        let small = expected
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(u64::from(*d)))
            .is_some_and(|n| n <= 1 << 20);
        if !small {
            continue;
        }
        if let Ok(values) = tensor.to_f32(expected) {
            assert_eq!(Ok(values.len() as u64), tensor.element_count());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::UpdateUpload(update)) = Message::decode(MessageKind::UpdateUpload, data) {
        update.tensors.iter().for_each(check);
    }
    if let Ok(tensor) = postcard::from_bytes::<NamedTensor>(data) {
        check(&tensor);
    }
});
