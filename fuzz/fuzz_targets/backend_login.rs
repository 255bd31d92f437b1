//! The backend login state machine: any sequence of messages from a
//! backend ends in an error or a login, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rolemint::secret::Secret;
use rolemint::pg::backend::flow::{Flow, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let password = Secret::new("fuzz-password");
    let mut flow = Flow::new("v-fuzz", &password, flags & 1 == 1);
    // The input is a list of (tag, u16 length, body) records; each becomes a
    // well-framed message, so the fuzzer reaches the states behind the
    // framing. A record with flag bit 1 is passed unframed instead.
    while rest.len() >= 3 {
        let tag = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let frame = if flags & 2 == 2 {
            body.to_vec()
        } else {
            let mut frame = vec![tag];
            frame.extend_from_slice(&((len + 4) as u32).to_be_bytes());
            frame.extend_from_slice(body);
            frame
        };
        match flow.step(&frame) {
            Ok(Step::Ready(_)) | Err(_) => return,
            Ok(_) => {}
        }
    }
});
