//! The stream deframer and every message decoder: arbitrary bytes, fed in arbitrary pieces.
#![no_main]

use fedfuse_protocol::{FrameDecoder, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the stream is split, so split handling is fuzzed too.
    let Some((&split, stream)) = data.split_first() else { return };
    let split = (split as usize).min(stream.len());
    let mut decoder = FrameDecoder::new(1 << 20);
    for piece in [&stream[..split], &stream[split..]] {
        if decoder.push(piece).is_err() {
            return;
        }
        while let Ok(Some((kind, body))) = decoder.pop() {
            if let Ok(msg) = Message::decode(kind, &body) {
                // Whatever decodes re-encodes, and the encoding is a fixed point (compared as
                // bytes, since NaN fields make `==` on messages useless).
                let frame = msg.encode().expect("a decoded message re-encodes");
                let again = Message::decode_frame(&frame, u64::MAX).expect("our own frame decodes");
                assert_eq!(again.encode().expect("re-encodes"), frame);
            }
        }
    }
    let _ = Message::decode_frame(stream, u64::MAX);
});
