//! Tensor payload decoding: shape, row-index and length validation on hostile tensors.
#![no_main]

use fedfuse_protocol::{Message, MessageKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::UpdateUpload(update)) = Message::decode(MessageKind::UpdateUpload, data) {
        for tensor in &update.tensors {
            if let Ok(values) = tensor.to_f32() {
                assert_eq!(Ok(values.len() as u64), tensor.element_count());
            }
        }
    }
    if let Ok(tensor) = postcard::from_bytes::<fedfuse_protocol::tensor::NamedTensor>(data) {
        if let Ok(values) = tensor.to_f32() {
            assert_eq!(Ok(values.len() as u64), tensor.element_count());
        }
    }
});
