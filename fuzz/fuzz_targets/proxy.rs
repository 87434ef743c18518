//! The sans-IO proxy fed arbitrary datagrams: no panic, only parseable output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sip::fuzzing::exercise_proxy;

fuzz_target!(|data: &[u8]| {
    exercise_proxy(data);
});
