//! The message parser and every typed view on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sip::fuzzing::exercise_message;

fuzz_target!(|data: &[u8]| {
    exercise_message(data);
});
