//! The wire messages (`GetRequest`, `GetResponse`, `SetRequest`) decoded from arbitrary bytes, as
//! a peer or an attacker may send them: decoding never panics, and whatever decodes re-encodes to
//! bytes that decode to the same message, whose encoding is then stable.
#![no_main]

use std::fmt::Debug;

use groupcache_rs_pb::{GetRequest, GetResponse, SetRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    round_trip::<GetRequest>(data, |_| true);
    // NaN is not equal to itself; for a NaN `minute_qps` only the bytes are compared.
    round_trip::<GetResponse>(data, |m| !m.minute_qps.is_some_and(f64::is_nan));
    round_trip::<SetRequest>(data, |_| true);
});

fn round_trip<M: Message + Default + PartialEq + Debug>(data: &[u8], comparable: fn(&M) -> bool) {
    let Ok(message) = M::decode(data) else {
        return;
    };
    let encoded = message.encode_to_vec();
    assert_eq!(encoded.len(), message.encoded_len());
    let again = M::decode(encoded.as_slice()).expect("a re-encoded message must decode");
    if comparable(&message) {
        assert_eq!(again, message, "re-encoded message differs");
    }
    assert_eq!(again.encode_to_vec(), encoded, "encoding is not stable");
}
